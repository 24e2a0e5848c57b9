"""DPO batch layouts: how a micro-batch of tokenized pairs becomes model rows (the log-prob code: logprobs.py).

Each pair becomes *pieces*, then the pieces become rows:
  * unshared: two sequences per pair, prompt + shared prefix + chosen (resp. rejected) suffix;
  * shared: one tree per pair (prefix_sharing.py): [trunk | last shared token, chosen | last shared token,
    rejected], the prompt + shared prefix computed once.
  * unpacked: one piece per row, rows right-padded to the longest (unshared: all chosen rows, then all rejected);
  * packed: every piece of the micro-batch in ONE row, back to back, no padding at all; position ids restart at
    each piece. Unshared pieces are separated by transformers itself (it reads sequence starts from the position
    ids, for every attention backend incl. flash-attention's varlen kernels); trees need our mask (seq_ids, branch_ids;
    prefix_sharing.tree_attention_mask builds it at forward time, dense or as a FlexAttention block mask).

The layout dict (the seam with logprobs.pair_logps):
  input_ids [R, T]; attention_mask [R, T] (unpacked unshared only: padding); position_ids [R, T] (packed or shared);
  seq_ids, branch_ids [R, T] (shared only: piece index in its row / 0 trunk, 1 chosen, 2 rejected; -1 padding);
  score_index [N] (flat r*T+t of the hidden state that predicts a scored token), score_target [N],
  score_segment [N] (pair*4 + segment: chosen prefix, chosen suffix, rejected prefix, rejected suffix),
  segment_tokens [B, 4] (token counts of those segments, whether or not the prefix was scored),
  prefix_shared (scalar: 1 when the prefix was scored once for both responses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

SEGMENTS = 4  # chosen prefix, chosen suffix, rejected prefix, rejected suffix


@dataclass
class Piece:
    """One row segment: tokens with their branch and position ids, and what it scores (offset, target, segment)."""
    tokens: List[int]
    branch: List[int]
    positions: List[int]
    scored: List[Tuple[int, int, int]] = field(default_factory=list)


def sequence_piece(p: dict, b: int, side: int, score_prefix: bool) -> Piece:
    """prompt + prefix + suffix of one response; the token at index i is predicted at i - 1."""
    prompt, prefix, suffix = p["prompt_ids"], p["prefix_ids"], p["rejected_ids" if side else "chosen_ids"]
    tokens = list(prompt) + list(prefix) + list(suffix)
    start = len(prompt) if score_prefix else len(prompt) + len(prefix)
    scored = [(pos - 1, tokens[pos], b * SEGMENTS + 2 * side + (pos >= len(prompt) + len(prefix)))
              for pos in range(start, len(tokens))]
    return Piece(tokens, [0] * len(tokens), list(range(len(tokens))), scored)


def tree_piece(p: dict, b: int, score_prefix: bool) -> Piece:
    """[trunk = prompt + prefix minus its last token | last, chosen | last, rejected] (see prefix_sharing.py)."""
    shared = list(p["prompt_ids"]) + list(p["prefix_ids"])
    chosen, rejected = list(p["chosen_ids"]), list(p["rejected_ids"])
    n_shared, n_chosen = len(shared), len(chosen)
    tokens = shared + chosen + shared[-1:] + rejected
    branch = [0] * (n_shared - 1) + [1] * (n_chosen + 1) + [2] * (len(rejected) + 1)
    positions = list(range(n_shared + n_chosen)) + list(range(n_shared - 1, n_shared + len(rejected)))
    scored = []
    if score_prefix:  # prefix token i sits at prompt_len + i and is predicted in the trunk, once
        scored += [(pos - 1, shared[pos], b * SEGMENTS) for pos in range(len(p["prompt_ids"]), n_shared)]
    # each suffix token is predicted by its branch head (the repeated last shared token) or its predecessor
    scored += [(n_shared - 1 + j, tok, b * SEGMENTS + 1) for j, tok in enumerate(chosen)]
    scored += [(n_shared + n_chosen + j, tok, b * SEGMENTS + 3) for j, tok in enumerate(rejected)]
    return Piece(tokens, branch, positions, scored)


def pair_tokens(p: dict, shared: bool) -> int:
    """Positions a pair takes in a packed row: its tree (one repeated token), or its two sequences."""
    n_shared = len(p["prompt_ids"]) + len(p["prefix_ids"])
    suffixes = len(p["chosen_ids"]) + len(p["rejected_ids"])
    return n_shared + suffixes + 1 if shared else 2 * n_shared + suffixes


def segment_tokens(pairs: Sequence[dict]) -> torch.Tensor:
    return torch.tensor([[len(p["prefix_ids"]), len(p["chosen_ids"]), len(p["prefix_ids"]), len(p["rejected_ids"])]
                         for p in pairs], dtype=torch.long)


def build_layout(pairs: Sequence[dict], pad_token_id: int, shared: bool = False, packed: bool = False,
                 score_prefix: bool = True) -> Dict[str, torch.Tensor]:
    """The layout of `pairs` (items: prompt_ids, prefix_ids, chosen_ids, rejected_ids) for one forward."""
    if shared:
        pieces = [tree_piece(p, b, score_prefix) for b, p in enumerate(pairs)]
    else:
        pieces = [sequence_piece(p, b, side, score_prefix) for side in (0, 1) for b, p in enumerate(pairs)]
    rows = [pieces] if packed else [[piece] for piece in pieces]
    width = max(sum(len(piece.tokens) for piece in row) for row in rows)
    ids, branch, seq, positions, index, target, segment = [], [], [], [], [], [], []
    for r, row in enumerate(rows):
        ids.append([]), branch.append([]), seq.append([]), positions.append([])
        for s, piece in enumerate(row):
            offset = len(ids[r])
            for at, tok, seg in piece.scored:
                index.append(r * width + offset + at)
                target.append(tok)
                segment.append(seg)
            ids[r] += piece.tokens
            branch[r] += piece.branch
            seq[r] += [s] * len(piece.tokens)
            positions[r] += piece.positions
        pad = width - len(ids[r])
        ids[r] += [pad_token_id] * pad
        branch[r] += [-1] * pad
        seq[r] += [-1] * pad
        positions[r] += [0] * pad
    layout = {"input_ids": torch.tensor(ids, dtype=torch.long),
              "score_index": torch.tensor(index, dtype=torch.long),
              "score_target": torch.tensor(target, dtype=torch.long),
              "score_segment": torch.tensor(segment, dtype=torch.long),
              "segment_tokens": segment_tokens(pairs), "prefix_shared": torch.tensor(int(shared))}
    if shared:
        layout.update(seq_ids=torch.tensor(seq, dtype=torch.long), branch_ids=torch.tensor(branch, dtype=torch.long))
    if shared or packed:
        layout["position_ids"] = torch.tensor(positions, dtype=torch.long)
    else:
        layout["attention_mask"] = (torch.tensor(seq) >= 0).long()
    return layout
