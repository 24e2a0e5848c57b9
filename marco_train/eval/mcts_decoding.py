"""Test-time search ("MCTS decoding", the paper's Table 7): the search as a decoder, with no ground truth.

Per problem the search of mcts/search.py runs exactly `rollouts` rollouts with what a decoder may know: the
reward is the path's confidence (the v1 reward: mean c_i over its generated tokens), never the verifier; a
wrong answer cannot be seen, so no reflection is grafted on one; a reflection is added only where a path's
running confidence drops below `reflect_below_confidence`. The problem reaches the search with its answer
removed (`Searcher.ground_truth = False`: terminals are read, never checked) and is scored afterwards.

Each rollout is one record, in rollout order, as a sample is in sampling: a rollout that walks back into a
terminal reached before counts again (N counts rollouts, duplicates included). So Test@N (eval/metrics.py:
solved by one of the first N records) is "solved by one of the first N rollouts", and `tokens@N` is the
mean over problems of the tokens generated to make the first N records: for sampling the N samples' tokens,
for the search every sample its first N rollouts asked for (an expansion's siblings and the merged duplicates
included; mcts/search.py `count_tokens`), so the two columns compare like for like.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, List

from ..config import at_least
from ..engines.base import Completion
from ..mcts.policy import Policy, PolicyKeys
from ..mcts.search import Searcher, SearchKeys, SearchSettings
from ..mcts.tree import StopRules, path, response_text
from ..tasks.base import Problem
from .metrics import score_samples


@dataclass
class DecodingSearch(PolicyKeys, SearchKeys):
    """The eval stage's `search` section (decoding: mcts): the node policy and search keys of the mcts stage,
    with test-time defaults, and the number of rollouts per problem."""
    rollouts: int = at_least(1, default=32, hint="N: rollouts per problem, duplicates included")
    reward: str = "confidence"  # the only reward without a ground truth
    reflect_on_wrong: bool = False  # a wrong answer is not known at test time
    reflect_below_confidence: float = 0.9  # a reflection where a path's running confidence falls below this


def check_search(search, prefix: str) -> List[tuple]:
    """(key, what is wrong) for a test-time search section; empty when usable."""
    out = [(f"{prefix}.{key}", msg) for key, msg in Policy(search).problems()]
    if search.reward != "confidence":
        out.append((f"{prefix}.reward", f"'{search.reward}' reads the ground truth; test-time search uses confidence"))
    if search.reflect_on_wrong:
        out.append((f"{prefix}.reflect_on_wrong", "needs the ground truth; set false (reflect_below_confidence "
                                                  "grafts reflections at test time)"))
    if search.reflect_on not in search.node_types:
        out.append((f"{prefix}.reflect_on", f"'{search.reflect_on}' is not a configured node type"))
    return out


def search_trees(engine, task, problems: List[Problem], search, seed: int, trees_in_flight: int,
                 progress=None) -> Dict[str, object]:
    """{problem id: its test-time search tree}; the search sees each problem without its answer."""
    settings = SearchSettings(seed=seed, rules=StopRules(max_iterations=search.rollouts),
                              **{f.name: getattr(search, f.name) for f in fields(SearchKeys)})
    searcher = Searcher(Policy(search), settings, task, engine)
    searcher.ground_truth = False
    trees = {}

    def done(tree, in_flight: int) -> None:
        trees[tree.problem.id] = tree
        if progress is not None:
            progress.update(1)

    searcher.run([Problem(p.id, p.question, "") for p in problems], done, trees_in_flight)
    return trees


def search_decode(engine, task, problems: List[Problem], search, seed: int, trees_in_flight: int,
                  progress=None) -> List[dict]:
    """Records (one per rollout, `search.rollouts` per problem, in problem order) of a test-time search."""
    trees = search_trees(engine, task, problems, search, seed, trees_in_flight, progress)
    return [r for p in problems for r in rollout_records(trees[p.id], task, p)]


def rollout_records(tree, task, problem: Problem) -> List[dict]:
    """One scored record per rollout of `tree`, in rollout order (eval/metrics.py fields, plus `rollout`,
    `generated_tokens`: the tokens that rollout cost, and `pattern`)."""
    terminals = tree.rollouts
    gens = [Completion(text=response_text(t), token_ids=[], logprobs=[], top_logprobs=[], confidences=[],
                       finish_reason="length" if any(n.finish_reason == "length" for n in path(t)) else "stop")
            for t in terminals]
    records = score_samples(task, [problem] * len(gens), gens)
    for k, (record, terminal) in enumerate(zip(records, terminals)):
        record.update(rollout=k, response_tokens=sum(n.generated for n in path(terminal)),
                      generated_tokens=tree.tokens_by_rollout.get(k, 0), pattern=tree.pattern)
    return records


def tokens_at(records: List[dict], ns) -> Dict[str, float]:
    """tokens@N: mean over problems of the tokens generated for their first N records (`generated_tokens`, or
    `response_tokens` for a sample), in record order."""
    by_problem: Dict[str, List[int]] = {}
    for r in records:
        by_problem.setdefault(r["id"], []).append(r.get("generated_tokens", r["response_tokens"]))
    return {f"tokens@{n}": sum(sum(t[:n]) for t in by_problem.values()) / len(by_problem) for n in ns}
