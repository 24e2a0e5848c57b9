"""Result tables: accuracy (no-answer rate) per variant (row) and task (column), the paper's layout.

An eval stage's `variant` labels its row (default: the name of the model stage it evaluates). The printed
table holds accuracy and the no-answer rate only (also results.md / ablation.md); the CSV and JSON beside it
(results.csv / results.json in the experiment directory, ablation.csv for ablate) add per task every metric of
CSV_METRICS (definitions in marco_train/eval/metrics.py): no-answer among finished outputs, truncation, format
rate, and the whole-response fallback's accuracy and no-answer rate. W&B gets the same numbers as a table with
numeric cells, one row per (variant, task) (`results/table`, `ablation/table`), in a run of its own whose inputs
are the eval stages' artifacts.
"""

from __future__ import annotations

import csv
import io
from typing import Dict, List, Tuple

CSV_METRICS = ("accuracy", "no_answer_rate", "no_answer_rate_finished", "truncation_rate", "format_rate",
               "fallback_accuracy", "fallback_no_answer_rate", "mean_response_tokens", "samples")


def eval_cells(plan, results) -> List[Tuple[str, str, dict]]:
    """(variant, task, metrics) for every finished eval stage, in DAG order."""
    cells = []
    for name, s in plan.stages.items():
        if s.kind == "eval" and "metrics" in results.get(name, {}):
            variant = s.cfg.get("variant") or s.inputs.get("model", name)
            cells.append((variant, results[name].get("task", s.cfg.task), results[name]["metrics"]))
    return cells


def table(plan, results) -> Tuple[List[str], List[List[str]], List[List[object]]]:
    """Header, formatted rows ("41.0% (3.5%)"), and raw rows (CSV_METRICS per task) for the CSV."""
    cells = eval_cells(plan, results)
    variants = list(dict.fromkeys(v for v, _, _ in cells))
    tasks = list(dict.fromkeys(t for _, t, _ in cells))
    by_key: Dict[tuple, dict] = {(v, t): m for v, t, m in cells}
    header = ["variant"] + tasks
    text_rows, raw_rows = [], []
    for v in variants:
        text, raw = [v], [v]
        for t in tasks:
            m = by_key.get((v, t))
            text.append(f"{m['accuracy']:.1%} ({m['no_answer_rate']:.1%})" if m else "–")
            raw += [m.get(k) for k in CSV_METRICS] if m else [None] * len(CSV_METRICS)
        text_rows.append(text)
        raw_rows.append(raw)
    return header, text_rows, raw_rows


NUMERIC_COLUMNS = ("variant", "task") + CSV_METRICS


def numeric_rows(plan, results) -> List[list]:
    """One row per (variant, task): the variant, the task and CSV_METRICS as numbers (None where undefined)."""
    return [[v, t] + [m.get(k) for k in CSV_METRICS] for v, t, m in eval_cells(plan, results)]


def track_table(plan, results, name: str, out_dir, config: dict) -> None:
    """A W&B run `name` (in `out_dir`) holding the numeric table `<name>/table`; its inputs are the eval stages."""
    from .tracking import Tracker

    wandb_cfg = plan.root.wandb
    tracker = Tracker(out_dir, experiment=plan.root.experiment, name=name, kind=name, config=config,
                      project=wandb_cfg.project, entity=wandb_cfg.entity, mode=wandb_cfg.mode, seed=plan.root.seed,
                      upload_artifacts=wandb_cfg.upload_artifacts)
    evals = [s for n, s in plan.stages.items() if s.kind == "eval" and "metrics" in results.get(n, {})]
    tracker.use_inputs([(s.name, s.kind, s.out_dir, s.fingerprint) for s in evals])
    tracker.table("table", list(NUMERIC_COLUMNS), numeric_rows(plan, results))
    tracker.finish()


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(header, raw_rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["variant"] + [f"{t}/{k}" for t in header[1:] for k in CSV_METRICS])
    writer.writerows(raw_rows)
    return out.getvalue()


def print_report(plan, results) -> None:
    """The table on stdout (not under --quiet) and on disk (write_results)."""
    from . import logs

    say = (lambda text: None) if logs.quiet() else print
    for name, s in plan.stages.items():
        record = results.get(name, {}).get("record") if s.kind == "bootstrap" else None
        if record and "accuracy" in record:
            say(f"\n{name}: recorded held-out accuracy {record['accuracy']:.1%} "
                  f"(no-answer {record['no_answer_rate']:.1%}) on {record.get('heldout_problems', '?')} problems")
    header, rows, raw = table(plan, results)
    if rows:
        say("\naccuracy (no-answer rate)\n" + markdown(header, rows))
        write_results(plan, results, header, rows, raw)
        say(f"(no-answer among finished outputs, truncation, format rate and the whole-response fallback: "
            f"{plan.experiment_dir}/results.csv, results.json)")


def write_results(plan, results, header, rows, raw) -> None:
    """results.md (the printed table), results.csv (CSV_METRICS per task) and results.json (every eval's full
    metrics) in the experiment dir; the numeric table to W&B (a run in <experiment dir>/_results)."""
    from .io import atomic_write_json, atomic_write_text

    out = plan.experiment_dir
    atomic_write_text(out / "results.md", "accuracy (no-answer rate)\n\n" + markdown(header, rows))
    atomic_write_text(out / "results.csv", csv_text(header, raw))
    atomic_write_json(out / "results.json", [{"variant": v, "task": t, **m} for v, t, m in eval_cells(plan, results)])
    track_table(plan, results, "results", out / "_results", {"config_file": plan.config_file,
                                                              "overrides": list(plan.overrides)})
