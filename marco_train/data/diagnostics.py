"""What a set of trees says about the search, for the mcts and split summaries (and W&B): the numbers the
method's claims rest on, over the distinct root-to-answer paths of each tree (paths with the same response
text count once).

- `duplicate_sibling_rate`: of the samples the search generated, the share whose text a sibling already had
  (merged into it; mcts/search.py), from the trees' `duplicate_samples` / `sampled_nodes` (None for trees
  that do not record them, e.g. the authors' format);
- `process`: the correct paths the step checker rejects (right answer, wrong process), by reason (None
  without a checker; {"error": ...} when the checker cannot read the trees' questions);
- `reflection`: answers below a reflection node that are correct, against answers elsewhere;
- `confidence`: the mean path confidence (mean node confidence along the path) of correct and of wrong paths;
  the v1 confidence reward rests on the gap. `plot_confidence` draws both distributions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..io import DataError
from .paths import extract_paths


def _rate(part: int, whole: int) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def _mean(values: List[float]) -> Optional[float]:
    return round(sum(values) / len(values), 4) if values else None


def below_reflection(tree, node_ids: List[int]) -> bool:
    return any(tree.nodes[i].type == "reflection" for i in node_ids)


def tree_diagnostics(trees, check: Optional[Callable[[str, str], object]]) -> dict:
    """The diagnostics of the module docstring; `check(question, response)` is a task's step checker (or None).
    `confidence` also keeps the values (for the plot) under `values`; `for_summary` drops them."""
    sampled = duplicates = 0
    recorded = False
    failed, correct_paths = Counter(), 0
    answers = {True: [0, 0], False: [0, 0]}  # below a reflection? -> [answers, correct]
    confidence = {"correct": [], "wrong": []}
    error = None
    for tree in trees:
        if "sampled_nodes" in tree.meta:
            recorded = True
            sampled += tree.meta["sampled_nodes"]
            duplicates += tree.meta.get("duplicate_samples", 0)
        seen = set()
        for p in extract_paths(tree):
            if p.correct is None or p.response in seen:
                continue
            seen.add(p.response)
            below = below_reflection(tree, p.node_ids)
            answers[below][0] += 1
            answers[below][1] += bool(p.correct)
            if p.confidence is not None:
                confidence["correct" if p.correct else "wrong"].append(p.confidence)
            if p.correct:
                correct_paths += 1
                if check is not None and error is None:
                    try:
                        verdict = check(tree.question, p.response)
                    except DataError as e:
                        error = str(e)
                        continue
                    if not verdict.ok:
                        failed[verdict.reason] += 1
    process = None
    if error is not None:
        process = {"error": error}
    elif check is not None:
        process = {"correct_paths": correct_paths, "failed": sum(failed.values()),
                   "failed_share": _rate(sum(failed.values()), correct_paths), "reasons": dict(sorted(failed.items()))}
    return {
        "duplicate_sibling_rate": _rate(duplicates, sampled) if recorded else None,
        "sampled_nodes": sampled if recorded else None, "duplicate_samples": duplicates if recorded else None,
        "process": process,
        "reflection": {"below_reflection": {"answers": answers[True][0], "correct": answers[True][1],
                                            "rate": _rate(answers[True][1], answers[True][0])},
                       "elsewhere": {"answers": answers[False][0], "correct": answers[False][1],
                                     "rate": _rate(answers[False][1], answers[False][0])}},
        "confidence": {"correct_mean": _mean(confidence["correct"]), "wrong_mean": _mean(confidence["wrong"]),
                       "correct_paths": len(confidence["correct"]), "wrong_paths": len(confidence["wrong"]),
                       "values": confidence},
    }


def scalars(diag: dict) -> Dict[str, float]:
    """The headline numbers as flat keys (for W&B)."""
    out = {"duplicate_sibling_rate": diag["duplicate_sibling_rate"],
           "process_failed_share": (diag["process"] or {}).get("failed_share"),
           "reflection_success_rate": diag["reflection"]["below_reflection"]["rate"],
           "answer_correct_rate_elsewhere": diag["reflection"]["elsewhere"]["rate"],
           "confidence_correct_mean": diag["confidence"]["correct_mean"],
           "confidence_wrong_mean": diag["confidence"]["wrong_mean"]}
    return {k: v for k, v in out.items() if v is not None}


def for_summary(diag: dict) -> dict:
    """The diagnostics without the per-path confidence values."""
    return {**diag, "confidence": {k: v for k, v in diag["confidence"].items() if k != "values"}}


def diagnostics_line(diag: dict) -> str:
    """The diagnostics in one line, for the log."""
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    refl, conf, process = diag["reflection"], diag["confidence"], diag["process"]
    parts = [f"duplicate siblings {pct(diag['duplicate_sibling_rate'])}",
             "correct paths failing the step check " + (
                 "- (no step checker)" if not process else f"- ({process['error']})" if "error" in process
                 else f"{process['failed']}/{process['correct_paths']}"),
             f"answers correct below a reflection {refl['below_reflection']['correct']}/"
             f"{refl['below_reflection']['answers']}, elsewhere {refl['elsewhere']['correct']}/"
             f"{refl['elsewhere']['answers']}",
             f"confidence correct {conf['correct_mean']} vs wrong {conf['wrong_mean']}"]
    return "; ".join(parts)


def plot_confidence(diag: dict, path: Path) -> None:
    """Histograms of the path confidence of correct and of wrong paths, with their means, as a PNG."""
    from matplotlib.figure import Figure

    values = diag["confidence"]["values"]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    pooled = values["correct"] + values["wrong"]
    lo, hi = (min(pooled), max(pooled)) if pooled else (0.0, 1.0)
    for name, color in (("correct", "tab:green"), ("wrong", "tab:red")):
        if values[name]:
            mean = sum(values[name]) / len(values[name])
            ax.hist(values[name], bins=40, range=(lo, hi if hi > lo else lo + 1e-6), color=color, alpha=0.5,
                    density=True, label=f"{name} (n={len(values[name])}, mean {mean:.3f})")
            ax.axvline(mean, color=color, linestyle="--")
    ax.set_xlabel("path confidence (mean node confidence along the path)")
    ax.set_ylabel("density")
    ax.set_title("Confidence of correct and wrong paths (distinct texts)")
    if pooled:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
