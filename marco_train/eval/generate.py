"""Sampling for evaluation through the search's engine interface (`hf` or `vllm`, marco_train/engines).

Greedy when one sample per problem, else `n` samples at `temperature`; each problem's request is seeded
from (seed, problem id), so its samples do not depend on batch composition or on the world size. Ranks take
every world_size-th problem (`dist.my_share`) and rank order is restored by `gather_records`.
"""

from __future__ import annotations

from typing import List

from .. import dist
from ..engines.base import Completion, SamplingParams, derive_seed
from ..prompts import prompt_ids


def sample(engine, task, problems, samples_per_problem: int, max_new_tokens: int, temperature: float, seed: int,
           progress=None) -> List[Completion]:
    """Generations in problem order, `samples_per_problem` consecutive ones per problem."""

    greedy = samples_per_problem == 1
    for i, p in enumerate(problems):
        params = SamplingParams(n=samples_per_problem, max_tokens=max_new_tokens,
                                temperature=0.0 if greedy else temperature, seed=derive_seed(seed, p.id))
        engine.add_request(i, prompt_ids(engine.tokenizer, task, p.question), params)
    done = {}
    while engine.has_unfinished():
        for i, completions in engine.step():
            done[i] = completions
            if progress is not None:
                progress.update(1)
    return [g for i in range(len(problems)) for g in done[i]]


def gather_records(mine: list, problems: int, per_problem: int) -> list:
    """Every rank's records (`per_problem` consecutive ones per problem of its dist.my_share) in problem order."""
    shards = dist.all_gather_object(mine)
    world = len(shards)
    return [shards[i % world][(i // world) * per_problem + j] for i in range(problems) for j in range(per_problem)]
