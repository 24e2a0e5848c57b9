"""The dpo stage's batching: steps defined in pairs, micro-batches by a token budget, as many on every rank.

* A step is `global_batch` pairs of a seeded per-epoch permutation (an epoch's last step may have fewer). A
  step's pair set depends on the seed, the epoch and the global batch only, never on the budget or world size.
* Its pairs go into micro-batches: first-fit decreasing by the positions each takes in a packed row, at most
  `micro_tokens` per micro-batch (a longer pair goes alone); unpacked layouts take at most `micro_pairs` pairs.
  The micro-batches are spread over the ranks so that every rank takes the same number (else DDP's all-reduce and
  ZeRO-3's gathers would wait forever): while they do not divide evenly, the micro-batch with the most pairs is
  split in two; when every micro-batch is down to one pair, a copy of a pair with weight 0 fills in (its forward
  and backward run like any other, its gradient is exactly zero).
* Weights: each pair of a step of n pairs weighs world_size / n. A rank sums its micro-batches' weighted losses;
  DDP and ZeRO average gradients over ranks; so the step's gradient is that of the mean loss over its n pairs,
  whatever the budget and the world size (up to float summation order).
* score_budget: per micro-batch index, the most scored positions any rank has there, so every rank calls the LM
  head equally often (logprobs.pair_logps; under ZeRO-3 each call gathers its weight).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


def step_pairs(n_pairs: int, global_batch: int, seed: int, epoch: int) -> List[List[int]]:
    """The pair indices of every step of `epoch`."""
    order = list(range(n_pairs))
    random.Random(f"dpo-steps:{seed}:{epoch}").shuffle(order)
    return [order[i:i + global_batch] for i in range(0, n_pairs, global_batch)]


def first_fit_decreasing(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    """Bins of item indices with summed size <= capacity (an item larger than capacity gets a bin of its own)."""
    bins: List[List[int]] = []
    loads: List[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        fit = next((b for b, load in enumerate(loads) if load + sizes[i] <= capacity), None)
        if fit is None:
            bins.append([i])
            loads.append(sizes[i])
        else:
            bins[fit].append(i)
            loads[fit] += sizes[i]
    return bins


@dataclass
class MicroBatch:
    items: List[int]  # positions in the step's pair list
    filler: bool = False  # a weight-0 copy, so that every rank has as many micro-batches


def spread(bins: List[List[int]], sizes: Sequence[int], world: int) -> List[List[MicroBatch]]:
    """Per rank, its micro-batches: the same number on every rank, the positions balanced greedily."""
    bins = [list(b) for b in bins]
    fillers = []
    while len(bins) % world:
        widest = max(range(len(bins)), key=lambda b: (len(bins[b]), sum(sizes[i] for i in bins[b]), -b))
        if len(bins[widest]) == 1:
            fillers.append(MicroBatch([bins[0][0]], filler=True))
            if (len(bins) + len(fillers)) % world == 0:
                break
            continue
        halves: List[List[int]] = [[], []]
        for i in sorted(bins[widest], key=lambda i: (-sizes[i], i)):
            min(halves, key=lambda h: sum(sizes[j] for j in h)).append(i)
        bins[widest:widest + 1] = halves
    per_rank = (len(bins) + len(fillers)) // world
    ranks: List[List[MicroBatch]] = [[] for _ in range(world)]
    loads = [0] * world
    for b in sorted(range(len(bins)), key=lambda b: (-sum(sizes[i] for i in bins[b]), b)):
        r = min((r for r in range(world) if len(ranks[r]) < per_rank), key=lambda r: (loads[r], r))
        ranks[r].append(MicroBatch(bins[b]))
        loads[r] += sum(sizes[i] for i in bins[b])
    for filler in fillers:
        r = min((r for r in range(world) if len(ranks[r]) < per_rank), key=lambda r: (loads[r], r))
        ranks[r].append(filler)
    return ranks


def plan_step(sizes: Sequence[int], world: int, micro_tokens: Optional[int] = None,
              micro_pairs: Optional[int] = None) -> List[List[MicroBatch]]:
    """The micro-batches of one step's pairs (sizes: positions per pair), per rank."""
    if micro_tokens is not None:
        bins = first_fit_decreasing(sizes, micro_tokens)
    else:  # unpacked: similar lengths together (less padding), at most micro_pairs per micro-batch
        order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
        bins = [order[i:i + micro_pairs] for i in range(0, len(order), micro_pairs)]
    return spread(bins, sizes, world)


class StepDataset(torch.utils.data.Dataset):
    """Item i = this rank's micro-batch layouts of step i of the current `epoch` (set by the trainer)."""

    def __init__(self, examples: Sequence[dict], collator, global_batch: int, seed: int, world: int, rank: int,
                 micro_tokens: Optional[int] = None, micro_pairs: Optional[int] = None):
        if (micro_tokens is None) == (micro_pairs is None):
            raise ValueError("give micro_tokens (packed layouts) or micro_pairs (padded layouts)")
        self.examples, self.collator, self.global_batch, self.seed = list(examples), collator, global_batch, seed
        self.world, self.rank, self.micro_tokens, self.micro_pairs = world, rank, micro_tokens, micro_pairs
        self.epoch, self._order = 0, (None, None)

    def __len__(self) -> int:
        return -(-len(self.examples) // self.global_batch)

    def plan(self, step: int):
        """(the step's pair indices, per rank its micro-batches)."""
        if self._order[0] != self.epoch:  # one shuffle per epoch
            self._order = (self.epoch, step_pairs(len(self.examples), self.global_batch, self.seed, self.epoch))
        pairs = self._order[1][step]
        sizes = [self.collator.tokens(self.examples[i]) for i in pairs]
        return pairs, plan_step(sizes, self.world, self.micro_tokens, self.micro_pairs)

    def __getitem__(self, step: int) -> List[dict]:
        pairs, ranks = self.plan(step)
        weight = self.world / len(pairs)
        layouts = []
        for k, micro in enumerate(ranks[self.rank]):
            layout = self.collator([self.examples[pairs[i]] for i in micro.items])
            layout["pair_weight"] = torch.full((len(micro.items),), 0.0 if micro.filler else weight)
            layout["score_budget"] = torch.tensor(max(sum(self.collator.scored(self.examples[pairs[i]])
                                                          for i in per_rank[k].items) for per_rank in ranks))
            layouts.append(layout)
        return layouts


def step_loader(dataset: StepDataset) -> torch.utils.data.DataLoader:
    """One item per optimizer step; sequential (the shuffling is the dataset's, per epoch)."""
    return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=lambda items: items[0],
                                       num_workers=0)
