"""DPO pairs: tokenize and check them once, then collate batches into a log-prob layout (see logprobs.py).

Input: the split stage's `pairs` dataset (id, question, chosen, rejected, shared_prefix_len, ...), or a user's pairs
with their own prompt messages instead of a question (data/user_data.py). Each pair is tokenized with the prompt
contract (the prompt of prompts.row_messages + response_ids, response = text + eos), and the shared prefix — the
number of leading *response* tokens chosen and rejected have in common — is computed from the token ids; where the
dataset records `shared_prefix_len` it must agree (a mismatch means split ran with another tokenizer).

Kept pairs are stored split at the divergence point: prompt_ids, prefix_ids (the shared response prefix),
chosen_ids and rejected_ids (the divergent suffixes, each ending in eos). Dropped and counted, never a crash or
a NaN later:
  * identical chosen and rejected, or no divergent token on one side (`no_divergence`);
  * longer than `max_length` (prompt + the longer response): with truncation="cut_prefix" (default) the first
    tokens of the shared reasoning are cut — the question and both divergent suffixes stay whole, as does the
    shared reasoning right before the divergence, which the suffixes depend on most; a pair that does not fit even
    with the whole shared prefix cut, or any over-long pair with truncation="drop", is dropped (`too_long`).
Cut tokens leave both sequences identically, so the pair stays a pair with a shorter shared prefix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

from ..data.split import common_prefix_len  # the one definition, also used to write shared_prefix_len
from ..io import DataError

PAIR_FIELDS = ("id", "chosen", "rejected")  # and a question or prompt messages
TRUNCATION_MODES = ("cut_prefix", "drop")


@dataclass
class PairStats:
    total: int = 0
    kept: int = 0
    truncated: int = 0  # kept, with part of the shared prefix cut
    dropped_no_divergence: int = 0
    dropped_too_long: int = 0


def split_pair(prompt: List[int], chosen: List[int], rejected: List[int], max_length: int,
               truncation: str = "cut_prefix") -> Tuple[str, dict]:
    """("kept" | "truncated" | "no_divergence" | "too_long", example) for one tokenized pair."""
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation='{truncation}': use cut_prefix or drop")
    k = common_prefix_len(chosen, rejected)
    if k == len(chosen) or k == len(rejected):
        return "no_divergence", {}
    excess = len(prompt) + max(len(chosen), len(rejected)) - max_length
    cut = max(excess, 0)
    if cut and (truncation == "drop" or cut > k):
        return "too_long", {}
    example = {"prompt_ids": prompt, "prefix_ids": chosen[cut:k],
               "chosen_ids": chosen[k:], "rejected_ids": rejected[k:]}
    return ("truncated" if cut else "kept"), example


def tokenize_pairs(rows: Iterable[dict], tokenizer, task, max_length: int, truncation: str = "cut_prefix",
                   source: str = "pairs") -> Tuple[List[dict], PairStats]:
    """Tokenize, check and split every pair; `source` names the dataset in errors."""
    from ..prompts import chat_prompt_ids, response_ids, row_messages

    stats, kept = PairStats(), []
    for i, row in enumerate(rows):
        for name in PAIR_FIELDS + (() if row.get("prompt") else ("question",)):
            if name not in row or row[name] is None:
                raise DataError(f"{source}: row {i}: missing field '{name}' (a pairs dataset has "
                                f"{', '.join(PAIR_FIELDS)} and a question); re-run the split stage")
        stats.total += 1
        prompt = chat_prompt_ids(tokenizer, row_messages(task, row))
        chosen, rejected = response_ids(tokenizer, row["chosen"]), response_ids(tokenizer, row["rejected"])
        shared = common_prefix_len(chosen, rejected)
        if row.get("shared_prefix_len") is not None and shared != int(row["shared_prefix_len"]):
            raise DataError(f"{source}: row {i} (id {row['id']!r}): shared_prefix_len is {row['shared_prefix_len']} "
                            f"but the {getattr(tokenizer, 'name_or_path', '')} tokenizer gives {shared} shared "
                            f"response "
                            f"tokens; the split stage must use the tokenizer of the model being trained — re-run it")
        status, example = split_pair(prompt, chosen, rejected, max_length, truncation)
        if status == "no_divergence":
            stats.dropped_no_divergence += 1
        elif status == "too_long":
            stats.dropped_too_long += 1
        else:
            stats.truncated += status == "truncated"
            kept.append({"pair_index": len(kept), "id": str(row["id"]), **example})
    stats.kept = len(kept)
    if not kept:
        raise DataError(f"{source}: no usable pair among {stats.total} ({asdict(stats)}); check the split stage's "
                        f"output or raise training.max_length")
    return kept, stats


class PairCollator:
    """Batches of tokenized pairs -> a log-prob layout (layouts.py): unshared or prefix-shared trees, padded rows
    or one packed row.

    score_prefix=False skips scoring the shared-prefix tokens (when no loss term reads them).
    Cached reference log-probs (a `ref_logps` column) are passed through as a [B, 4] tensor.
    """

    def __init__(self, pad_token_id: int, shared: bool = False, score_prefix: bool = True, packed: bool = False):
        self.pad_token_id, self.shared, self.score_prefix, self.packed = pad_token_id, shared, score_prefix, packed

    def tokens(self, example: Dict) -> int:
        """Positions the example takes in a packed row of this layout."""
        from .layouts import pair_tokens

        return pair_tokens(example, self.shared)

    def scored(self, example: Dict) -> int:
        """Scored positions of the example (LM-head rows)."""
        return len(example["chosen_ids"]) + len(example["rejected_ids"]) + (
            len(example["prefix_ids"]) * (1 if self.shared else 2) if self.score_prefix else 0)

    def __call__(self, examples: Sequence[Dict]) -> Dict:
        import torch

        from .layouts import build_layout

        layout = build_layout(examples, self.pad_token_id, self.shared, self.packed, self.score_prefix)
        layout["pair_index"] = torch.tensor([int(e["pair_index"]) for e in examples], dtype=torch.long)
        if "ref_logps" in examples[0]:
            layout["ref_logps"] = torch.tensor([list(e["ref_logps"]) for e in examples], dtype=torch.float32)
        return layout
