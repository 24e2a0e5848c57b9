"""Stage `split`: trees -> the length-balanced SFT set and the DPO pair set (rules in data/split.py).

Inputs: `trees` (an mcts stage; or set `trees_dir` to trees made elsewhere, e.g. by the authors' v2 engine)
and `model` (the *student*, the model to be trained: its tokenizer measures lengths and shared prefixes). The
teacher that searched the trees may be another model with another tokenizer: the split reads the trees' text
only (never their stored token ids), so teacher and student are separate inputs.

Process check (`process_check`, on by default): where the task has a step checker (tasks/base.py
`check_steps`; toy and gsm8k have one) only the correct paths it accepts become SFT rows and the chosen side
of pairs; a task without one keeps every correct path and the summary says so; `false` keeps every correct
path. The summary counts the paths it rejected by reason and the queries it left without a row. With
`rejected_wrong_process: true` (off by default) a right-answer-wrong-process path is also a candidate for
the rejected side of a pair (the same rejected rule picks among it and the wrong answers).

Writes <dir>/sft and <dir>/pairs (datasets.save_to_disk; schema in marco_train/data/schema.py and
mcts_data/README.md), summary.json (counts, drops by reason, length stats per tercile, diagnostics of the
trees: data/diagnostics.py), lengths.png and confidence.png; and the same rows in TRL's and LLaMA-Factory's
formats under <dir>/export (data/export.py). The work is light (tokenising text), so rank 0 does it and the
other ranks wait. An empty SFT or pair set (the search solved nothing, or no trees) fails the
stage with the reason: no data set and no _DONE.json are written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from .. import dist
from ..config import ConfigError, ModelConfig, StageConfig, at_least, checked, path_field
from ..data import split as S
from ..data.authors_format import read_authors_tree
from ..data.diagnostics import diagnostics_line, for_summary, plot_confidence, scalars, tree_diagnostics
from ..data.export import FORMATS as EXPORT_FORMATS
from ..data.export import export_split
from ..data.paths import extract_paths
from ..data.schema import PAIR_COLUMNS, SFT_COLUMNS, save_rows
from ..data.split import CHOSEN_RULES, REJECTED_RULES, TERCILES
from ..data.trees import read_trees
from ..io import DataError, atomic_write_json
from ..models import load_tokenizer, model_dir
from ..prompts import prompt_ids, response_ids
from ..tasks import check_task, get_task

KIND = "split"
INPUTS = {"trees": "trees_dir", "model": "model.name_or_path"}  # the model: its tokenizer measures lengths
READS = {"trees": ("trees",), "model": ("model",)}  # what it reads in each input's directory
FORMATS = ("auto", "ours", "authors")


@dataclass
class Config(StageConfig):
    kind: str = KIND
    task: str = checked("toy", check_task)
    # A tree file or directory made elsewhere; empty = <trees input>/trees (an mcts stage).
    trees_dir: str = path_field("")
    tree_format: str = "auto"  # auto (by extension: .jsonl ours, .json authors' v2) | ours | authors
    tercile_mode: str = "per_query"  # per_query (the paper) | global (ablation)
    sft_terciles: List[str] = field(default_factory=lambda: ["longest"])
    sft_max_per_query: int = at_least(0, default=1)  # the longest N of the selected terciles per query; 0 = all of them
    chosen: str = "shortest"  # shortest | longest | random correct path
    rejected: str = "shortest_prefix"  # wrong path with the shortest_prefix | longest_prefix shared | random
    max_length: int = at_least(0, default=0)  # drop paths whose prompt + response tokens exceed this; 0 = keep all
    process_check: bool = True  # keep only process-correct paths where the task has a step checker (docstring)
    rejected_wrong_process: bool = False  # a right answer reached by a wrong process may be the rejected side
    model: ModelConfig = field(default_factory=ModelConfig)  # the tokenizer; empty = the `model` input's
    export_format: str = "jsonl"  # <dir>/export files (TRL, LLaMA-Factory): jsonl | parquet


def check_config(cfg, prefix: str, where=lambda key: key) -> None:
    """Called by the pipeline at plan time (before any work)."""
    allowed = {"tree_format": FORMATS, "tercile_mode": ("per_query", "global"), "chosen": CHOSEN_RULES,
               "rejected": REJECTED_RULES, "export_format": EXPORT_FORMATS}
    for key, values in allowed.items():
        if cfg[key] not in values:
            raise ConfigError(f"{where(prefix + '.' + key)}: {prefix}.{key}='{cfg[key]}': use one of "
                              f"{', '.join(values)}")
    if cfg.trees_dir and "trees" in cfg.inputs:
        raise ConfigError(f"{where(prefix)}: {prefix}: set exactly one of inputs.trees (an mcts stage) and trees_dir "
                          f"(tree files made elsewhere)")
    for t in cfg.sft_terciles:
        if t not in TERCILES:
            raise ConfigError(f"{where(prefix + '.sft_terciles')}: {prefix}.sft_terciles: '{t}' is not one of "
                              f"{', '.join(TERCILES)}")
    if cfg.rejected_wrong_process and not cfg.process_check:
        raise ConfigError(f"{where(prefix + '.rejected_wrong_process')}: {prefix}.rejected_wrong_process needs the "
                          f"process check (process_check: true)")


def process_checker(task, enabled: bool):
    """The task's step checker if the split filters with it (`process_check`), else None."""
    return task.check_steps if enabled and task.has_step_checker else None


def run(ctx) -> dict:
    from ..data.length_plot import plot_lengths  # matplotlib

    cfg = ctx.cfg
    summary = None
    if dist.is_main():
        source = Path(cfg.trees_dir) if cfg.trees_dir else Path(ctx.inputs["trees"])
        fmt, files = tree_files(source, cfg.tree_format)
        tokenizer_path = cfg.model.name_or_path or model_dir(ctx.inputs["model"])
        tokenizer = load_tokenizer(tokenizer_path, cfg.model.trust_remote_code)
        trees = load_trees(files, fmt)
        ctx.log(f"{len(trees)} trees ({fmt} format) from {source}")
        task = get_task(cfg.task)
        out = build_split(trees, tokenizer, task, cfg, ctx.root.seed)
        diag = tree_diagnostics(trees, process_checker(task, cfg.process_check))
        plot_lengths(out["lengths"], ctx.out_dir / "lengths.png", cfg.tercile_mode)
        plot_confidence(diag, ctx.out_dir / "confidence.png")
        summary = {"task": cfg.task, "format": fmt, "source": str(source), "tokenizer": str(tokenizer_path),
                   **out["summary"], "diagnostics": for_summary(diag)}
        atomic_write_json(ctx.out_dir / "summary.json", summary)
        refuse_empty(ctx.name, summary, ctx.out_dir / "summary.json")
        save_rows(out["sft"], SFT_COLUMNS, ctx.out_dir / "sft")
        save_rows(out["pairs"], PAIR_COLUMNS, ctx.out_dir / "pairs")
        export_split(out["sft"], out["pairs"], task, ctx.out_dir, cfg.export_format, f"marco_{cfg.task}")
        process = summary["process_check"]
        ctx.tracker.log({"split/sft_rows": len(out["sft"]), "split/pairs": len(out["pairs"]),
                         "split/trees": len(trees), "split/process_failed": process["failed"],
                         **{f"split/{k}": v for k, v in scalars(diag).items()}}, step=0)
        ctx.tracker.image("split/lengths", ctx.out_dir / "lengths.png")
        ctx.tracker.image("split/confidence", ctx.out_dir / "confidence.png")
        ctx.log(f"process check: {process['checker']}; {process['passed']} of {process['correct_paths']} correct "
                f"paths kept, rejected {process['failed_by_reason'] or 'none'}")
        ctx.log(f"SFT set {len(out['sft'])} rows, {len(out['pairs'])} pairs; dropped (sft) "
                f"{summary['sft']['dropped'] or 'none'}, (pairs) {summary['pairs']['dropped'] or 'none'}")
        ctx.log(diagnostics_line(summary["diagnostics"]))
    return dist.broadcast_object(summary)


def refuse_empty(name: str, summary: dict, summary_path: Path) -> None:
    """An empty SFT or pair set is no result: the stage fails with the reason (and writes no _DONE.json) instead
    of saving a data set the trainers cannot load."""
    empty = [f"no {what} ({summary[key]['dropped'] or 'no queries'} dropped)" for key, what in
             (("sft", "SFT rows"), ("pairs", "DPO pairs")) if not summary[key]["rows"]]
    if empty:
        raise DataError(f"stages.{name}: {' and '.join(empty)} from {summary['trees']} trees in {summary['source']}; "
                        f"the search must solve some queries (and miss on some, for pairs): search more problems "
                        f"or iterations, or check the task's answers (counts in {summary_path})")


def tree_files(source: Path, fmt: str):
    """(format, files) for a tree file or directory (an mcts stage dir's trees/ is looked into)."""
    if not source.exists():
        raise DataError(f"{source}: tree file or directory not found")
    if source.is_dir() and (source / "trees").is_dir():
        source = source / "trees"
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.suffix in (".jsonl", ".json"))
    kinds = {"ours" if p.suffix == ".jsonl" else "authors" for p in files}
    if fmt == "auto":
        if len(kinds) != 1:
            raise DataError(f"{source}: " + ("no tree files (*.jsonl ours, *.json authors' v2)" if not kinds else
                                             "both *.jsonl and *.json files; set tree_format: ours | authors"))
        fmt = kinds.pop()
    files = [p for p in files if p.suffix == (".jsonl" if fmt == "ours" else ".json")] if source.is_dir() else files
    if not files:
        raise DataError(f"{source}: no {'*.jsonl' if fmt == 'ours' else '*.json'} tree files for tree_format={fmt}")
    return fmt, files


def load_trees(files: List[Path], fmt: str):
    trees, seen = [], {}
    for path in files:
        for tree in (read_trees(path) if fmt == "ours" else [read_authors_tree(path)]):
            if tree.problem_id in seen:
                raise DataError(f"{tree.source}: problem '{tree.problem_id}' already has a tree at "
                                f"{seen[tree.problem_id]}")
            seen[tree.problem_id] = tree.source
            trees.append(tree)
    return sorted(trees, key=lambda t: t.problem_id)


def build_split(trees, tokenizer, task, cfg, seed: int) -> dict:
    """The whole selection, in memory: {"sft": rows, "pairs": rows, "summary": {...}, "lengths": {...}}."""
    counts, sft_drops, pair_drops, process_failed = Counter(), Counter(), Counter(), Counter()
    check = process_checker(task, cfg.process_check)
    queries = []  # (tree, prompt ids, correct paths, wrong paths, correct answers failing the step check)
    for tree in trees:
        prompt = prompt_ids(tokenizer, task, tree.question)
        correct, wrong, texts = [], [], set()
        for p in extract_paths(tree):
            counts["paths"] += 1
            if p.correct is None:
                counts["unscored"] += 1
                continue
            if p.response in texts:
                counts["duplicate_text"] += 1
                continue
            texts.add(p.response)
            p.extra["ids"] = response_ids(tokenizer, p.response)
            p.tokens = len(p.extra["ids"])
            if cfg.max_length and len(prompt) + p.tokens > cfg.max_length:
                counts["too_long"] += 1
                continue
            (correct if p.correct else wrong).append(p)
        counts["correct"] += len(correct)
        counts["wrong"] += len(wrong)
        failed = []
        if check is not None:
            try:
                verdicts = [check(tree.question, p.response) for p in correct]
            except DataError as e:
                raise DataError(f"{tree.source}: tree '{tree.problem_id}': {e}") from None
            process_failed.update(v.reason for v in verdicts if not v.ok)
            failed = [p for p, v in zip(correct, verdicts) if not v.ok]
            correct = [p for p, v in zip(correct, verdicts) if v.ok]
            for p in failed:
                p.extra["wrong_process"] = True
            if cfg.rejected_wrong_process:
                wrong = wrong + failed
        queries.append((tree, prompt, correct, wrong, failed))

    if cfg.tercile_mode == "global":
        pool = [p for _, _, correct, _, _ in queries for p in correct]
        for p, label in zip(pool, S.tercile_labels([p.tokens for p in pool])):
            p.tercile = label
    else:
        for _, _, correct, _, _ in queries:
            for p, label in zip(correct, S.tercile_labels([p.tokens for p in correct])):
                p.tercile = label

    sft, pairs, rejected_wrong_process = [], [], 0
    for tree, prompt, correct, wrong, failed in queries:
        if not correct:
            reason = "no_process_correct_path" if failed else "no_correct_path" if wrong else "no_scored_path"
            sft_drops[reason] += 1
            pair_drops[reason] += 1
            continue
        picked = S.select_sft([p.tokens for p in correct], [p.tercile for p in correct], cfg.sft_terciles,
                              cfg.sft_max_per_query)
        if not picked:
            sft_drops["no_path_in_terciles"] += 1
        for i in picked:
            p = correct[i]
            sft.append({"id": f"{tree.problem_id}/{p.leaf_id}", "problem_id": tree.problem_id,
                        "question": tree.question, "response": p.response, "tokens": p.tokens,
                        "tercile": p.tercile, "confidence": p.confidence})
        if not wrong:
            pair_drops["no_wrong_path"] += 1
            continue
        rng = S.query_rng(seed, tree.problem_id)
        c = correct[S.choose_index([p.tokens for p in correct], cfg.chosen, rng)]
        r = wrong[S.reject_index(c.extra["ids"], [p.extra["ids"] for p in wrong], cfg.rejected, rng)[0]]
        rejected_wrong_process += bool(r.extra.get("wrong_process"))
        pairs.append({"id": f"{tree.problem_id}/{c.leaf_id}-{r.leaf_id}", "problem_id": tree.problem_id,
                      "question": tree.question, "chosen": c.response, "rejected": r.response,
                      "shared_prefix_len": S.shared_prefix_len(prompt, c.extra["ids"], r.extra["ids"]),
                      "chosen_tokens": c.tokens, "rejected_tokens": r.tokens})

    all_correct = [p for _, _, correct, _, _ in queries for p in correct]
    lengths = {t: [p.tokens for p in all_correct if p.tercile == t] for t in S.TERCILES}
    lengths["wrong"] = [p.tokens for _, _, _, wrong, _ in queries for p in wrong]
    summary = {
        "trees": len(trees), "paths": {k: counts[k] for k in ("paths", "correct", "wrong", "unscored",
                                                                "duplicate_text", "too_long")},
        "process_check": {
            "checker": (f"{task.name} step checker" if check is not None else "off" if task.has_step_checker
                        else f"none (task '{task.name}' has no step checker)"),
            "correct_paths": counts["correct"], "passed": len(all_correct),
            "failed": sum(process_failed.values()), "failed_by_reason": dict(sorted(process_failed.items())),
            "rejected_wrong_process": rejected_wrong_process},
        "sft": {"rows": len(sft), "queries": len({r["problem_id"] for r in sft}),
                "dropped": dict(sorted(sft_drops.items()))},
        "pairs": {"rows": len(pairs), "dropped": dict(sorted(pair_drops.items())),
                  "shared_prefix_len": S.length_stats([r["shared_prefix_len"] for r in pairs]),
                  "chosen_tokens": S.length_stats([r["chosen_tokens"] for r in pairs]),
                  "rejected_tokens": S.length_stats([r["rejected_tokens"] for r in pairs])},
        "lengths": {k: S.length_stats(v) for k, v in lengths.items()},
    }
    return {"sft": sft, "pairs": pairs, "summary": summary, "lengths": lengths}
