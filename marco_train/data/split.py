"""Length balance and pair selection as pure functions over lengths and token ids (the split stage's rules).

- `tercile_labels`: rank paths by token length into shortest / medium / longest. Applied to the correct
  paths of one query (the paper's relative split) or to all correct paths at once (`global` ablation).
- `choose_index` / `reject_index`: the DPO pair rules. chosen = the shortest correct path (the paper's
  "data balance"), the longest, or a random one (plain "+DPO"); rejected = the wrong path sharing the
  shortest common token prefix with the chosen one (the paper's choice), the longest, or a random one.
- `shared_prefix_len`: leading *response* tokens two full chat-formatted sequences share.
Ties keep the input order (the split stage passes paths in terminal-node-id order), so results are
deterministic; `random` rules take a seeded `random.Random`.
"""

from __future__ import annotations

import random
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

TERCILES = ("shortest", "medium", "longest")
CHOSEN_RULES = ("shortest", "longest", "random")
REJECTED_RULES = ("shortest_prefix", "longest_prefix", "random")


def tercile_labels(lengths: Sequence[int]) -> List[str]:
    """Label each length by its rank r (0 = shortest, ties in input order) among n: with q = r / (n - 1),
    q < 1/3 is shortest, q > 2/3 longest, the rest medium. n=2 gives shortest+longest, n=3 one of each,
    n=4 S M M L, n=5 S S M L L. A single path is its query's longest (so "the longest path per query"
    always exists)."""
    n = len(lengths)
    order = sorted(range(n), key=lambda i: lengths[i])
    labels = [""] * n
    for rank, i in enumerate(order):
        if n == 1 or 3 * rank > 2 * (n - 1):
            labels[i] = "longest"
        elif 3 * rank < n - 1:
            labels[i] = "shortest"
        else:
            labels[i] = "medium"
    return labels


def select_sft(lengths: Sequence[int], labels: Sequence[str], terciles: Sequence[str], max_per_query: int) -> List[int]:
    """Indices (into one query's correct paths) that enter the SFT set: those whose label is in `terciles`,
    longest first, at most `max_per_query` (0 = all)."""
    picked = sorted((i for i, t in enumerate(labels) if t in terciles), key=lambda i: -lengths[i])
    return picked[:max_per_query] if max_per_query else picked


def choose_index(lengths: Sequence[int], rule: str, rng: Optional[random.Random] = None) -> int:
    if rule == "shortest":
        return min(range(len(lengths)), key=lambda i: lengths[i])
    if rule == "longest":
        return max(range(len(lengths)), key=lambda i: (lengths[i], -i))
    if rule == "random":
        return rng.randrange(len(lengths))
    raise ValueError(f"chosen rule '{rule}': use one of {', '.join(CHOSEN_RULES)}")


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefix_len(prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> int:
    """Leading response tokens shared by the full sequences prompt+chosen and prompt+rejected (token ids of
    the response parts as `prompts.response_ids` makes them). Computed on ids, not text: a BPE merge across
    the point where the texts diverge makes the token prefix shorter than the tokenised common text."""
    full_c, full_r = list(prompt_ids) + list(chosen_ids), list(prompt_ids) + list(rejected_ids)
    return common_prefix_len(full_c, full_r) - len(prompt_ids)


def reject_index(chosen_ids: Sequence[int], wrong_ids: Sequence[Sequence[int]], rule: str,
                 rng: Optional[random.Random] = None) -> Tuple[int, int]:
    """(index into wrong_ids, its shared prefix length with chosen_ids) for the rejected rule."""
    shared = [common_prefix_len(chosen_ids, w) for w in wrong_ids]
    if rule == "shortest_prefix":
        i = min(range(len(shared)), key=lambda k: shared[k])
    elif rule == "longest_prefix":
        i = max(range(len(shared)), key=lambda k: (shared[k], -k))
    elif rule == "random":
        i = rng.randrange(len(shared))
    else:
        raise ValueError(f"rejected rule '{rule}': use one of {', '.join(REJECTED_RULES)}")
    return i, shared[i]


def query_rng(seed: int, problem_id: str) -> random.Random:
    """A per-query RNG: the same pair for a query whatever else is in the data set."""
    return random.Random(f"{seed}:{problem_id}")


def length_stats(values: Sequence[float]) -> Dict[str, float]:
    if not values:
        return {"count": 0}
    return {"count": len(values), "mean": round(statistics.fmean(values), 3), "min": min(values),
            "median": statistics.median(values), "max": max(values)}
