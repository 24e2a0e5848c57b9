"""Stage `mcts`: MCTS tree construction with dynamic reflection nodes.

Problems are sharded by id across ranks (sorted ids, round robin); each rank appends every finished tree to
its own shard `trees/rank-NNNNN.jsonl` (one tree per line, schema in mcts_data/README.md). A rerun repairs a
torn last line, skips every problem id already in any shard and searches the rest, so a kill loses at most
the trees in flight. The problem file is read and checked before any model is loaded.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict

from .. import dist
from ..config import ConfigError, ModelConfig, StageConfig, at_least, checked, path_field
from ..data.diagnostics import diagnostics_line, for_summary, plot_confidence, scalars, tree_diagnostics
from ..data.trees import read_tree_files
from ..engines import ENGINES, engine_from_config, prefix_cache_counts
from ..engines.base import check_prompts_fit
from ..faults import fault_point
from ..io import append_jsonl, atomic_write_json, read_jsonl, repair_jsonl_tail
from ..logs import progress
from ..mcts.policy import Policy, PolicyKeys
from ..mcts.search import Searcher, SearchKeys, SearchSettings
from ..mcts.tree import StopRules, to_record
from ..models import model_dir
from ..tasks import check_problems_source, check_task, get_task, select_problems

KIND = "mcts"
INPUTS = {"model": "model.name_or_path"}  # the policy checkpoint
RESUMABLE = True
READS = {"model": ("model",)}  # what it reads in each input's directory (checked before it runs)
# How the work is batched, not what is searched (float rounding aside; see mcts_data/README.md).
EXTRA_RUNTIME_KEYS = ("trees_in_flight", "max_batch_rows", "prefix_cache_mb", "engine_options")
REWARDS = ("verified", "confidence", "mixed")


@dataclass
class Config(StageConfig, PolicyKeys, SearchKeys, StopRules):
    kind: str = KIND
    task: str = checked("toy", check_task)
    problems_file: str = path_field("mcts_data/problems/toy_train.jsonl", check=check_problems_source)
    split: str = ""  # dataset split when the task loads problems by dataset name
    num_problems: int = at_least(0, default=0, hint="0 = all")
    first_problem: int = at_least(0, default=0)  # skip the source's first N problems (0-based start)
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input
    special_model: ModelConfig = field(default_factory=ModelConfig)  # empty = node types marked special use `model`
    engine: str = "hf"
    # keyword options of the engine (marco_train/engines): vllm: tensor_parallel_size, gpu_memory_utilization, ...
    engine_options: Dict[str, Any] = field(default_factory=dict)
    # the node policy (PolicyKeys, policy.py), the search (SearchKeys, search.py), the stop rules (StopRules,
    # tree.py): inherited
    # throughput (runtime keys)
    # each tree has about one row sampling at a time: keep max_batch_rows busy
    trees_in_flight: int = at_least(1, default=256)
    max_batch_rows: int = at_least(1, default=128)
    prefix_cache_mb: int = at_least(0, default=512)
    save_token_ids: bool = True


def check_config(cfg, prefix: str, where) -> None:
    def fail(key: str, msg: str):
        raise ConfigError(f"{where(prefix + '.' + key)}: {prefix}.{key} {msg}")

    for key, msg in Policy(cfg).problems():
        fail(key, msg)
    if cfg.engine not in ENGINES:
        fail("engine", f"'{cfg.engine}' is not available in this version (have: {', '.join(ENGINES)}); a vLLM or "
                       f"server engine plugs in behind marco_train.engines.base.Engine")
    if cfg.reward not in REWARDS:
        fail("reward", f"'{cfg.reward}' is not one of {', '.join(REWARDS)}")
    if not 0 <= cfg.verified_weight <= 1:
        fail("verified_weight", f"must be in [0, 1] (is {cfg.verified_weight})")
    if cfg.reflect_on not in cfg.node_types:
        fail("reflect_on", f"'{cfg.reflect_on}' is not a configured node type")
    biggest = max([n for spec in cfg.node_types.values() for n in spec.children.values()] + [cfg.step_samples])
    if biggest > cfg.max_batch_rows:
        fail("max_batch_rows", f"must hold the largest sample count of one expansion ({biggest})")


def run(ctx) -> dict:
    cfg = ctx.cfg
    task = get_task(cfg.task)
    # file:line errors come first
    problems = select_problems(task, cfg.problems_file, cfg.split, cfg.first_problem, cfg.num_problems)
    mine = dist.my_share(sorted(problems, key=lambda p: p.id))
    shard = shard_path(ctx.out_dir, dist.rank())
    shard.parent.mkdir(parents=True, exist_ok=True)
    if repair_jsonl_tail(shard):
        ctx.log(f"rank {dist.rank()}: cut a torn last line from {shard.name} (a tree being written at a kill)")
    dist.barrier()
    done_before = finished_ids(shard.parent)
    todo = [p for p in mine if p.id not in done_before]
    ctx.log(f"{len(problems)} problems, {len(mine)} on rank {dist.rank()}, {len(mine) - len(todo)} already done")
    step0 = len(mine) - len(todo)
    if dist.is_main():
        ctx.tracker.truncate_after(step0)
    engine, seconds, tokens, cache = None, 0.0, 0, (0, 0)
    if todo:
        hf_options = dict(max_batch_rows=cfg.max_batch_rows, prefix_cache_mb=cfg.prefix_cache_mb)
        engine = engine_from_config(cfg.engine, cfg.engine_options, cfg.model,
                                    cfg.model.name_or_path or model_dir(ctx.inputs["model"]), "policy", **hf_options)
        special = None
        if cfg.special_model.name_or_path:
            special = engine_from_config(cfg.engine, cfg.engine_options, cfg.special_model,
                                         cfg.special_model.name_or_path, "special", **hf_options)
        engines = [engine] + ([special] if special else [])
        for e in engines:  # every rank checks every problem: all fail together, none waits for the others
            check_prompts_fit(e, task, problems, cfg.problems_file)
        searcher = Searcher(Policy(cfg), SearchSettings.from_config(cfg, ctx.root.seed), task, engine, special)
        started = time.time()
        bar = progress(len(mine), f"{ctx.name}: trees", initial=step0, unit="trees")

        def on_done(tree, in_flight: int) -> None:
            append_jsonl(shard, [to_record(tree, cfg.task, ctx.fingerprint, cfg.save_token_ids)])
            fault_point(ctx.name, "mid_shard", ctx.kind)
            generated = sum(e.tokens_generated for e in engines)
            rate = generated / max(time.time() - started, 1e-9)
            bar.update(1)
            bar.set_postfix(in_flight=in_flight, tok_s=f"{rate:.0f}")
            if dist.is_main() and bar.n % max(1, cfg.log_every) == 0:
                ctx.tracker.log({"mcts/trees_done": bar.n, "mcts/trees_in_flight": in_flight,
                                 "mcts/tokens_per_second": rate}, step=bar.n)

        searcher.run(todo, on_done, cfg.trees_in_flight)
        bar.close()
        seconds, tokens = time.time() - started, sum(e.tokens_generated for e in engines)
        cache = tuple(map(sum, zip(*(prefix_cache_counts(e) for e in engines))))
    runs = dist.all_gather_object({"seconds": seconds, "tokens": tokens, "cache": cache})
    dist.barrier()
    summary = summarize(shard.parent, len(problems))
    wall = max(r["seconds"] for r in runs)
    summary.update(tokens_generated_this_run=sum(r["tokens"] for r in runs), generation_seconds=round(wall, 2),
                   tokens_per_second=round(sum(r["tokens"] for r in runs) / wall, 1) if wall else 0.0)
    hits, queries = (sum(r["cache"][i] for r in runs) for i in (0, 1))  # prompt tokens, this run
    summary.update(prefix_cache_hit_tokens=hits, prefix_cache_query_tokens=queries,
                   prefix_cache_hit_rate=round(hits / queries, 4) if queries else 0.0)
    if dist.is_main():
        diag = tree_diagnostics(read_tree_files(shard.parent), task.check_steps if task.has_step_checker else None)
        summary["diagnostics"] = for_summary(diag)
        atomic_write_json(ctx.out_dir / "summary.json", summary)
        plot_confidence(diag, ctx.out_dir / "confidence.png")
        ctx.tracker.log({**{f"mcts/{k}": v for k, v in summary.items() if isinstance(v, (int, float))},
                         **{f"mcts/{k}": v for k, v in scalars(diag).items()}}, step=max(len(mine), 1))
        ctx.tracker.image("mcts/confidence", ctx.out_dir / "confidence.png")
        ctx.tracker.html("trees", rendered_trees(shard.parent))
    summary["diagnostics"] = dist.broadcast_object(summary.get("diagnostics"))
    ctx.log(f"{summary['trees']} trees, {summary['nodes']} nodes, depth {summary['mean_depth']:.1f} "
            f"(max {summary['max_depth']}), {summary['reflections']} reflections, "
            f"correct terminals {summary['terminal_correct_rate']:.1%}, solved {summary['solved_rate']:.1%}, "
            f"{summary['tokens_per_second']:.0f} tokens/s")
    ctx.log(diagnostics_line(summary["diagnostics"]))
    return summary


def summarize(trees_dir, n_problems: int) -> dict:
    """Counts over every tree in the shards (including trees finished before a resume)."""
    trees = [r for shard in sorted(trees_dir.glob("rank-*.jsonl")) for r in read_jsonl(shard)]
    if len(trees) != n_problems or len({t["problem_id"] for t in trees}) != n_problems:
        raise RuntimeError(f"{trees_dir}: {len(trees)} trees for {n_problems} problems; rerun the stage to finish")
    nodes = [n for t in trees for n in t["nodes"]]
    depth = {}
    for t in trees:
        parent = {n["id"]: n["parent"] for n in t["nodes"]}
        d = {}
        for n in t["nodes"]:  # parents come before children
            d[n["id"]] = 0 if n["parent"] is None else d[parent[n["id"]]] + 1
        depth[t["problem_id"]] = max(d.values())
    terminals = [n for n in nodes if n["is_terminal"]]
    correct = [n for n in terminals if n["correct"]]
    return {"trees": len(trees), "nodes": len(nodes), "mean_nodes": round(len(nodes) / len(trees), 2),
            "mean_depth": round(sum(depth.values()) / len(trees), 2), "max_depth": max(depth.values()),
            "reflections": sum(n["type"] == "reflection" for n in nodes), "terminals": len(terminals),
            "correct_terminals": len(correct),
            "terminal_correct_rate": round(len(correct) / len(terminals), 4) if terminals else 0.0,
            "solved_rate": round(sum(t["correct_terminals"] > 0 for t in trees) / len(trees), 4),
            "mean_iterations": round(sum(t["iterations"] for t in trees) / len(trees), 2),
            "tokens_generated": sum(t["tokens_generated"] for t in trees),
            "stop_reasons": dict(Counter(t["stop_reason"] for t in trees)),
            "patterns": dict(sorted(Counter(t.get("pattern") or "" for t in trees).items())),
            **engine_counts(trees)}


def engine_counts(trees) -> dict:
    """Generation requests and sampled nodes by engine (and node type): where `special: true` types went."""
    requests, samples = Counter(), {}
    for t in trees:
        requests.update(t.get("requests_by_engine") or {})
        for engine, by_type in (t.get("samples_by_engine") or {}).items():
            samples.setdefault(engine, Counter()).update(by_type)
    return {"requests_by_engine": dict(sorted(requests.items())),
            "samples_by_engine": {e: dict(sorted(c.items())) for e, c in sorted(samples.items())}}


def rendered_trees(trees_dir, count: int = 3) -> str:
    """An HTML page (data/tree_html.py) of a few trees for W&B: the first solved, failed and with a reflection."""
    from ..data.tree_html import page
    from ..data.tree_view import matches

    trees = sorted(read_tree_files(trees_dir), key=lambda t: t.problem_id)
    picked = {}
    for wanted in ({"solved": True}, {"failed": True}, {"with_reflection": True}, {}):
        for t in trees:
            if len(picked) < count and t.problem_id not in picked and matches(t, **wanted):
                picked[t.problem_id] = t
                if wanted:
                    break
    return page(list(picked.values()), title=f"{len(picked)} of {len(trees)} trees")


def shard_path(out_dir, rank: int):
    return out_dir / "trees" / f"rank-{rank:05d}.jsonl"


def finished_ids(trees_dir) -> set:
    done = set()
    for shard in sorted(trees_dir.glob("rank-*.jsonl")):
        done.update(str(r["problem_id"]) for r in read_jsonl(shard, required=("problem_id",), allow_torn_tail=True))
    return done
