"""MCTS generation throughput (README: Performance): generated tokens/s of the tree search, from one run, as a
ratio to (a) plain batched sampling with the same engine, model and lengths: the searched problems' prompts,
one request per root-to-answer path drawn from the search's trees, each generating exactly as many tokens as
that path has (ignore_eos), so both attend over the same context lengths; and (b) a one-node-at-a-time
search (the same search, every sample its own request, one row at a time, no batching). Targets: (a) >=
0.85x, (b) >= 5x. Also printed: the ratio to plain sampling of the model's own (shorter) responses, the
share of search time spent on confidence (target <= 5 %) and the peak memory of the process.

    .venv/bin/python benchmarks/mcts_throughput.py [--problems 256] [--threads 1] [--repeat 3]
    .venv-vllm/bin/python benchmarks/mcts_throughput.py --engine vllm [--tensor-parallel-size 8]   # (a) only
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marco_train.engines.base import Engine, SamplingParams  # noqa: E402
from marco_train.engines.hf_engine import HFEngine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class OneAtATime(Engine):
    """Baseline wrapper: every sample of a request becomes its own n=1 request on a 1-row engine."""

    def __init__(self, inner: HFEngine):
        self.inner, self.tokenizer, self.name = inner, inner.tokenizer, inner.name
        self.parts = {}

    @property
    def tokens_generated(self):
        return self.inner.tokens_generated

    def add_request(self, request_id, prompt_ids, params):
        from dataclasses import replace

        from marco_train.engines.base import derive_seed

        self.parts[request_id] = [None] * params.n
        for j in range(params.n):
            self.inner.add_request((request_id, j), prompt_ids, replace(params, n=1, seed=derive_seed(params.seed, j)))

    def has_unfinished(self):
        return self.inner.has_unfinished()

    def step(self):
        out = []
        for (rid, j), (comp,) in self.inner.step():
            self.parts[rid][j] = comp
            if all(c is not None for c in self.parts[rid]):
                out.append((rid, self.parts.pop(rid)))
        return out


class Clock:
    """Wall time and this process's CPU time. On a machine shared with other jobs the wall clock measures the
    neighbours too; with one torch thread, tokens per CPU-second is the steadier figure."""

    def __init__(self):
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()

    def rates(self, tokens: int):
        self.wall = time.perf_counter() - self.start_wall
        self.cpu = time.process_time() - self.start_cpu
        return Rate(tokens / self.wall, tokens / self.cpu)


class Rate(tuple):
    def __new__(cls, wall: float, cpu: float):
        return super().__new__(cls, (wall, cpu))

    def __truediv__(self, other):
        return Rate(self[0] / other[0], self[1] / other[1])



def demo_search(engine, problems, in_flight: int) -> list:
    """The demo config's search (configs/demo.yaml, stage mcts) of `problems` on `engine`; the finished trees."""
    from omegaconf import OmegaConf

    from marco_train.mcts.policy import Policy
    from marco_train.mcts.search import Searcher, SearchSettings
    from marco_train.stages.mcts import Config
    from marco_train.tasks import get_task

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(ROOT / "configs" / "demo.yaml").stages.mcts)
    trees = []
    Searcher(Policy(cfg), SearchSettings.from_config(cfg, 0), get_task("toy"), engine).run(
        problems, lambda tree, live: trees.append(tree), in_flight)
    return trees


def search_rate(model, tokenizer, problems, rows: int, in_flight: int, one_at_a_time: bool = False):
    engine = HFEngine(model, tokenizer, max_batch_rows=1 if one_at_a_time else rows)
    clock = Clock()
    trees = demo_search(OneAtATime(engine) if one_at_a_time else engine, problems, 1 if one_at_a_time else in_flight)
    return clock.rates(engine.tokens_generated), engine, clock.wall, trees


def plain_rate(model, tokenizer, prompts, params, rows: int):
    engine = HFEngine(model, tokenizer, max_batch_rows=rows)
    clock = Clock()
    engine.generate(prompts, params)
    return clock.rates(engine.tokens_generated), engine, clock.wall


def path_lengths(trees, count: int, seed: int = 0):
    """(problem, response tokens) of `count` root-to-terminal paths drawn from the searched trees."""
    import random

    from marco_train.mcts.tree import path

    paths = [(t.problem, sum(len(next(iter(n.token_ids.values()), [])) for n in path(leaf)))
             for t in trees for leaf in t.nodes if leaf.is_terminal]
    return random.Random(seed).sample(paths, min(count, len(paths)))


def vllm_rates(args, problems) -> None:
    """--engine vllm: (a) as for hf (the search, then plain sampling at the search's path lengths, then at the
    model's own lengths), all through one VLLMEngine. (b) would need a second, one-sequence engine: not measured."""
    from marco_train.engines import build_engine, prefix_cache_counts
    from marco_train.models import load_tokenizer
    from marco_train.prompts import prompt_ids
    from marco_train.tasks import get_task

    task, tokenizer = get_task("toy"), load_tokenizer(args.model)
    engine = build_engine("vllm", args.model, tokenizer, tensor_parallel_size=args.tensor_parallel_size)
    clock = Clock()
    trees = demo_search(engine, problems, args.in_flight)
    search, search_tokens, seconds = clock.rates(engine.tokens_generated), engine.tokens_generated, clock.wall
    hits, queries = prefix_cache_counts(engine)

    def plain(prompts, params):
        before, clock = engine.tokens_generated, Clock()
        engine.generate(prompts, params)
        return clock.rates(engine.tokens_generated - before), clock.wall

    sampled = path_lengths(trees, args.paths)
    same, same_seconds = plain([prompt_ids(tokenizer, task, p.question) for p, _ in sampled],
                               [SamplingParams(max_tokens=n, ignore_eos=True, seed=i, logprobs=0)
                                for i, (_, n) in enumerate(sampled)])
    own, own_seconds = plain([prompt_ids(tokenizer, task, p.question) for p in problems],
                             [SamplingParams(max_tokens=args.max_tokens, seed=i, logprobs=0)
                              for i in range(len(problems))])
    print("engine: vllm; tokens/s (per wall second | per CPU second of this process)")
    print(f"tree search      : {search[0]:6.0f} | {search[1]:6.0f}  ({search_tokens} tokens, {len(trees)} trees, "
          f"{sum(len(t.nodes) for t in trees)} nodes, {seconds:.1f} s; vLLM prefix-cache hits {hits} of {queries} "
          f"prompt tokens = {hits / max(queries, 1):.1%})")
    print(f"plain sampling   : {same[0]:6.0f} | {same[1]:6.0f}  ({len(sampled)} responses of the search's path "
          f"lengths, mean {sum(n for _, n in sampled) / len(sampled):.0f} tokens, {same_seconds:.1f} s)")
    print(f"  own lengths    : {own[0]:6.0f} | {own[1]:6.0f}  ({len(problems)} responses up to end of turn, "
          f"{own_seconds:.1f} s)")
    a, b = search / same, search / own
    print(f"ratio vs plain batched sampling : {a[0]:.2f}x | {a[1]:.2f}x  (target >= 0.85x; vs the model's own "
          f"shorter responses: {b[0]:.2f}x | {b[1]:.2f}x)")
    print(f"peak memory (max RSS)           : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "marco_train" / "toy" / "checkpoint"))
    p.add_argument("--problems", type=int, default=256, help="trees searched (and prompts sampled) for (a)")
    p.add_argument("--one-node-problems", type=int, default=2, help="trees searched one node at a time for (b)")
    p.add_argument("--rows", type=int, default=128, help="engine batch rows")
    p.add_argument("--in-flight", type=int, default=256, help="trees in flight")
    p.add_argument("--max-tokens", type=int, default=256, help="plain sampling: max new tokens per response")
    p.add_argument("--paths", type=int, default=512, help="root-to-answer paths replayed as plain sampling")
    p.add_argument("--repeat", type=int, default=3, help="rounds of (search, plain sampling); the median ratio counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="vllm: run with .venv-vllm/bin/python")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs the model is spread over")
    args = p.parse_args()

    import torch

    from marco_train.models import load_model, load_tokenizer
    from marco_train.tasks import load_problems_file

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.engine == "vllm":
        return vllm_rates(args, load_problems_file(ROOT / "mcts_data" / "problems" / "toy_train.jsonl")[:args.problems])
    tokenizer, model = load_tokenizer(args.model), load_model(args.model)
    problems = load_problems_file(ROOT / "mcts_data" / "problems" / "toy_train.jsonl")
    from marco_train.prompts import prompt_ids
    from marco_train.tasks import get_task

    task = get_task("toy")
    searches, sames = [], []
    for round_ in range(args.repeat):  # alternate the two measurements; the machine's load drifts
        search, engine, seconds, trees = search_rate(model, tokenizer, problems[:args.problems], args.rows,
                                                     args.in_flight)
        if round_ == 0:  # (a) the same lengths: one request per sampled root-to-answer path, exactly its tokens
            sampled = path_lengths(trees, args.paths)
            conf_share = engine.stats["confidence_seconds"] / seconds  # timed on the wall clock
        same, _, same_seconds = plain_rate(model, tokenizer,
                                           [prompt_ids(tokenizer, task, p.question) for p, _ in sampled],
                                           [SamplingParams(max_tokens=n, ignore_eos=True, seed=i, logprobs=0)
                                            for i, (_, n) in enumerate(sampled)], args.rows)
        searches.append(search)
        sames.append(same)
    rounds = sorted(range(args.repeat), key=lambda i: (searches[i] / sames[i])[1])  # by the CPU-time ratio
    median = rounds[len(rounds) // 2]
    search, same = searches[median], sames[median]
    # for reference: the model's own responses (up to end of turn; shorter than the search's paths)
    plain, _, plain_seconds = plain_rate(model, tokenizer,
                                         [prompt_ids(tokenizer, task, p.question) for p in problems[:args.problems]],
                                         [SamplingParams(max_tokens=args.max_tokens, seed=i, logprobs=0)
                                          for i in range(args.problems)], args.rows)
    single, _, single_seconds, _ = search_rate(model, tokenizer, problems[args.problems:args.problems +
                                                                        args.one_node_problems], 1, 1, True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nodes = sum(len(t.nodes) for t in trees)
    mean_path = sum(n for _, n in sampled) / len(sampled)
    print("tokens/s (per wall second | per CPU second of this process)")
    print(f"tree search      : {search[0]:6.0f} | {search[1]:6.0f}  ({engine.tokens_generated} tokens, {len(trees)} "
          f"trees, {nodes} nodes, {seconds:.1f} s; prefix reuse {engine.stats['reused_tokens']} tokens, prefill "
          f"{engine.stats['prefill_tokens']} tokens)")
    print(f"plain sampling   : {same[0]:6.0f} | {same[1]:6.0f}  ({len(sampled)} responses of the search's path "
          f"lengths, mean {mean_path:.0f} tokens, {same_seconds:.1f} s)")
    print(f"  own lengths    : {plain[0]:6.0f} | {plain[1]:6.0f}  ({args.problems} responses up to end of turn, "
          f"{plain_seconds:.1f} s)")
    print(f"one node at once : {single[0]:6.0f} | {single[1]:6.0f}  ({single_seconds:.1f} s)")
    a, own, b = search / same, search / plain, search / single
    print(f"ratio vs plain batched sampling : {a[0]:.2f}x | {a[1]:.2f}x  (target >= 0.85x; vs the model's own "
          f"shorter responses: {own[0]:.2f}x | {own[1]:.2f}x)")
    print(f"ratio vs one-node-at-a-time     : {b[0]:.1f}x | {b[1]:.1f}x  (target >= 5x)")
    print("(a) in each round, wall | CPU: " + ", ".join(f"{(searches[i] / sames[i])[0]:.2f} | "
                                                    f"{(searches[i] / sames[i])[1]:.2f}" for i in range(args.repeat))
          + "; the median round (by CPU) is shown above")
    print(f"confidence share of search time : {conf_share:.1%}  (target <= 5%)")
    print(f"peak memory (max RSS)           : {peak_mb:.0f} MB   threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
