"""Result tables: accuracy (no-answer rate) per variant (row) and task (column), the paper's layout, with
uncertainty; and the paired differences between variants evaluated on the same problems.

An eval stage's `variant` labels its row (default: the name of the model stage it evaluates). A cell reads
`58.0% [53.6, 62.3] (0.0%)`: accuracy, its Wilson 95 % interval (evals with one sample per problem) and the
no-answer rate. Below it, every variant is compared with each eval of a model it descends from (its model
input, that stage's model input, ...: DPO with SFT and base, SFT with base) on the same problems of the same
task: `+12.5 [+8.1, +16.8] p=2.1e-08 (+80/−18)` = the difference in accuracy in points, Newcombe's paired 95 %
interval (method 10), the exact McNemar p, and the problems only the variant / only the baseline got right
(definitions: marco_train/eval/compare.py, formulas: marco_train/eval/intervals.py). An ablation grid's own
comparisons, with the paper's numbers and Holm's adjustment, are the config's `tables:` (eval/tables.py).

Files in the experiment directory: results.md (the printed tables), results.csv (per task every metric of
CSV_METRICS, definitions in marco_train/eval/metrics.py: no-answer among finished outputs, truncation, format
rate, the whole-response fallback's accuracy and no-answer rate, the Wilson limits; ablation.csv for ablate),
results.json (every eval's full metrics), differences.csv / differences.json (each comparison with both
intervals: Newcombe's and the paired bootstrap's, 10,000 resamples, seed 0). W&B gets the numbers as a table
with numeric cells, one row per (variant, task) (`results/table`, `ablation/table`), in a run of its own whose
inputs are the eval stages' artifacts.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .eval.compare import LEVEL, correct_by_problem, paired_difference
from .eval.intervals import wilson

CSV_METRICS = ("accuracy", "wilson_low", "wilson_high", "no_answer_rate", "no_answer_rate_finished",
               "truncation_rate", "format_rate", "fallback_accuracy", "fallback_no_answer_rate",
               "mean_response_tokens", "samples")
DIFF_COLUMNS = ("task", "variant", "baseline", "problems", "difference", "newcombe_low", "newcombe_high",
                "bootstrap_low", "bootstrap_high", "mcnemar_p", "only_first", "only_second", "both", "neither")
TABLE_TITLE = "accuracy [Wilson 95 % interval] (no-answer rate)"
DIFF_TITLE = ("paired differences, points [Newcombe's paired 95 % interval] exact McNemar p "
              "(+problems only the variant / −only the baseline got right)")


def variant_of(s) -> str:
    return s.cfg.get("variant") or s.inputs.get("model", s.name)


def eval_cells(plan, results) -> List[Tuple[str, str, dict]]:
    """(variant, task, metrics + Wilson limits) for every finished eval stage, in DAG order."""
    cells = []
    for name, s in plan.stages.items():
        if s.kind == "eval" and "metrics" in results.get(name, {}):
            metrics = dict(results[name]["metrics"])
            if s.cfg.get("samples_per_problem", 1) == 1 and metrics.get("samples"):
                k = round(metrics["accuracy"] * metrics["samples"])
                metrics["wilson_low"], metrics["wilson_high"] = wilson(k, metrics["samples"], LEVEL)
            cells.append((variant_of(s), results[name].get("task", s.cfg.task), metrics))
    return cells


def cell_text(m: dict) -> str:
    interval = f" [{100 * m['wilson_low']:.1f}, {100 * m['wilson_high']:.1f}]" if "wilson_low" in m else ""
    return f"{m['accuracy']:.1%}{interval} ({m['no_answer_rate']:.1%})"


def table(plan, results) -> Tuple[List[str], List[List[str]], List[List[object]]]:
    """Header, formatted rows ("41.0% [36.8, 45.4] (3.5%)"), and raw rows (CSV_METRICS per task) for the CSV."""
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
            text.append(cell_text(m) if m else "–")
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


# ----------------------------------------------------------------------------------------------- comparisons


def model_of(plan, s) -> Optional[str]:
    """What stage s starts from: a local or hub model path it names, else its `model` input's stage name."""
    path = s.cfg.get("model", {}).get("name_or_path") if "model" in s.cfg else None
    return f"path:{path}" if path else s.inputs.get("model")


def lineage(plan, model: Optional[str]) -> List[str]:
    """The model, the model it was trained from, and so on (stage names; a model path ends the chain)."""
    chain = []
    while model and model not in chain:
        chain.append(model)
        model = model_of(plan, plan.stages[model]) if model in plan.stages else None
    return chain


def read_samples(out_dir: Path) -> Optional[List[dict]]:
    path = Path(out_dir) / "samples.jsonl"
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparisons(plan, results) -> List[dict]:
    """{"task", "variant", "baseline", **paired_difference} for each eval and each eval of a model it descends
    from, on the same task and the same problems (by id, in order), one sample per problem; in DAG order."""
    evals = [s for name, s in plan.stages.items() if s.kind == "eval" and "metrics" in results.get(name, {})]
    per_problem = {}
    for s in evals:
        records = read_samples(s.out_dir) if s.cfg.get("samples_per_problem", 1) == 1 else None
        per_problem[s.name] = correct_by_problem(records) if records else None
    out = []
    for s in evals:
        ancestors = lineage(plan, model_of(plan, s))[1:]
        for base in sorted((b for b in evals if model_of(plan, b) in ancestors),
                           key=lambda b: ancestors.index(model_of(plan, b)), reverse=True):
            mine, theirs = per_problem[s.name], per_problem[base.name]
            task = results[s.name].get("task", s.cfg.task)
            if mine is None or theirs is None or mine[0] != theirs[0] or task != results[base.name].get("task"):
                continue
            out.append({"task": task, "variant": variant_of(s), "baseline": variant_of(base),
                        **paired_difference(mine[1], theirs[1])})
    return out


def p_text(p: float) -> str:
    return f"p={p:.1e}" if p < 0.001 else f"p={p:.3f}"


def difference_text(d: dict) -> str:
    return (f"{100 * d['difference']:+.1f} [{100 * d['newcombe_low']:+.1f}, {100 * d['newcombe_high']:+.1f}] "
            f"{p_text(d['mcnemar_p'])} (+{d['only_first']}/−{d['only_second']})")


def difference_table(diffs: List[dict]) -> Tuple[List[str], List[List[str]]]:
    tasks = list(dict.fromkeys(d["task"] for d in diffs))
    labels = list(dict.fromkeys(f"{d['variant']} − {d['baseline']}" for d in diffs))
    by_key = {(f"{d['variant']} − {d['baseline']}", d["task"]): d for d in diffs}
    rows = [[label] + [difference_text(by_key[label, t]) if (label, t) in by_key else "–" for t in tasks]
            for label in labels]
    return ["comparison"] + tasks, rows


# ---------------------------------------------------------------------------------------------------- output


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


def differences_csv(diffs: List[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DIFF_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(diffs)
    return out.getvalue()


def tables_text(plan, results) -> Tuple[str, List[dict]]:
    """Both printed tables as text ("" when no eval finished) and the comparisons behind the second."""
    header, rows, _ = table(plan, results)
    if not rows:
        return "", []
    text = f"{TABLE_TITLE}\n" + markdown(header, rows)
    diffs = comparisons(plan, results)
    if diffs:
        text += f"\n{DIFF_TITLE}\n" + markdown(*difference_table(diffs))
    return text, diffs


def print_report(plan, results) -> None:
    """The tables on stdout (not under --quiet) and on disk (write_results)."""
    from . import logs

    say = (lambda text: None) if logs.quiet() else print
    for name, s in plan.stages.items():
        record = results.get(name, {}).get("record") if s.kind == "bootstrap" else None
        if record and "accuracy" in record:
            say(f"\n{name}: recorded held-out accuracy {record['accuracy']:.1%} "
                f"(no-answer {record['no_answer_rate']:.1%}) on {record.get('heldout_problems', '?')} problems")
    text, diffs = tables_text(plan, results)
    if text:
        say("\n" + text)
        write_results(plan, results, text, diffs)
        say(f"(no-answer among finished outputs, truncation, format rate, the whole-response fallback: "
            f"{plan.experiment_dir}/results.csv, results.json; the differences with the paired bootstrap's "
            f"intervals too: differences.csv, differences.json)")


def write_results(plan, results, text: str, diffs: List[dict]) -> None:
    """results.md (the printed tables), results.csv (CSV_METRICS per task), results.json (every eval's full
    metrics), differences.csv / .json in the experiment dir; the numeric table to W&B (a run in
    <experiment dir>/_results)."""
    from .io import atomic_write_json, atomic_write_text

    out = plan.experiment_dir
    header, _, raw = table(plan, results)
    title, _, tables = text.partition("\n")
    atomic_write_text(out / "results.md", f"{title}\n\n{tables}")
    atomic_write_text(out / "results.csv", csv_text(header, raw))
    atomic_write_json(out / "results.json", [{"variant": v, "task": t, **m} for v, t, m in eval_cells(plan, results)])
    atomic_write_text(out / "differences.csv", differences_csv(diffs))
    atomic_write_json(out / "differences.json", diffs)
    track_table(plan, results, "results", out / "_results", {"config_file": plan.config_file,
                                                              "overrides": list(plan.overrides)})
