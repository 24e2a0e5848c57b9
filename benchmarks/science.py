"""The demo's effect across seeds (README "The demo"): runs the demo DAG at each seed (the global `seed=`
override; experiment `<experiment>-seed<N>`, so the runs do not share stage directories), prints each seed's
tables as the pipeline prints them, then per variant and per comparison the mean ± standard deviation over the
seeds (and min–max), and whether each of the acceptance bars holds at every seed: the lower limit of the 95 %
interval of SFT − base above 0, of DPO − base above 0, of DPO − SFT at least −3 points (Newcombe's paired
interval, as printed; marco_train/eval/compare.py).

    .venv/bin/python benchmarks/science.py [--seeds 0 1 2] [--config configs/demo.yaml] [--dev] [key=value ...]

`--dev` evaluates every eval stage on the dev set (mcts_data/problems/toy_dev.jsonl) instead: the figures
settings are chosen by (README "The demo"); the training stages are the same (cached) ones. Finished stages
are cached as everywhere, so a rerun only prints. Each seed's output goes to <runs_dir>/<experiment>-seed<N>.log
(-dev.log) as well; the summary to <runs_dir>/<experiment>-seeds.md (-dev.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marco_train.pipeline import build_plan  # noqa: E402
from marco_train.report import DIFF_TITLE, TABLE_TITLE  # noqa: E402

# (variant, baseline, the lowest allowed lower limit of variant − baseline) — issue 18's acceptance
BARS = (("SFT", "base", 0.0, ">"), ("DPO", "base", 0.0, ">"), ("DPO", "SFT", -0.03, ">="))


DEV_FILE = "mcts_data/problems/toy_dev.jsonl"


def run_seed(config: str, seed: int, overrides: list, experiment: str, runs_dir: Path, suffix: str) -> float:
    cmd = [sys.executable, str(ROOT / "launchers" / "pipeline.py"), "--config", config, f"seed={seed}",
           f"experiment={experiment}", *overrides]
    log = runs_dir / f"{experiment}{suffix}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"error: seed {seed} failed (exit code {code}); see {log}")
    text = log.read_text()
    print(f"\n=== seed {seed} ({experiment}, {time.time() - started:.0f} s)\n" + text[text.index(TABLE_TITLE):])
    return time.time() - started


def spread(values: list, scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f} ({min(values) * scale:.1f}–{max(values) * scale:.1f})"


def holds(low: float, bound: float, op: str) -> bool:
    return low > bound if op == ">" else low >= bound - 1e-12  # -3 points exactly is allowed


def summary(seeds: list, results: dict, diffs: dict) -> str:
    variants = list(dict.fromkeys(r["variant"] for s in seeds for r in results[s]))
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± SD (min–max) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for v in variants:
        rows = [next(r for r in results[s] if r["variant"] == v) for s in seeds]
        cells = [f"{100 * r['accuracy']:.1f} [{100 * r['wilson_low']:.1f}, {100 * r['wilson_high']:.1f}] "
                 f"({100 * r['no_answer_rate']:.1f})" for r in rows]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {spread([r['accuracy'] for r in rows])} |")
    lines += ["", "| comparison | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± SD (min–max) |",
              "|---|" + "---|" * (len(seeds) + 1)]
    pairs = list(dict.fromkeys((d["variant"], d["baseline"]) for s in seeds for d in diffs[s]))
    for v, b in pairs:
        rows = [next(d for d in diffs[s] if (d["variant"], d["baseline"]) == (v, b)) for s in seeds]
        cells = [f"{100 * d['difference']:+.1f} [{100 * d['newcombe_low']:+.1f}, {100 * d['newcombe_high']:+.1f}] "
                 f"p={d['mcnemar_p']:.2g}" for d in rows]
        lines.append(f"| {v} − {b} | " + " | ".join(cells) + f" | {spread([d['difference'] for d in rows])} |")
    lines.append("")
    for v, b, bound, op in BARS:
        found = [next((d for d in diffs[s] if (d["variant"], d["baseline"]) == (v, b)), None) for s in seeds]
        verdicts = ["missing" if d is None else "holds" if holds(d["newcombe_low"], bound, op) else "FAILS"
                    for d in found]
        lines.append(f"bar: lower limit of {v} − {b} {op} {100 * bound:+.0f} points: " +
                     ", ".join(f"seed {s} {x}" for s, x in zip(seeds, verdicts)))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dev", action="store_true", help=f"evaluate on the dev set ({DEV_FILE}) instead")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every seed's run")
    args = p.parse_args()
    plan = build_plan(str(ROOT / args.config) if not Path(args.config).is_absolute() else args.config, args.overrides)
    runs_dir = Path(plan.root.runs_dir)
    runs_dir = runs_dir if runs_dir.is_absolute() else ROOT / runs_dir
    overrides = list(args.overrides)
    if args.dev:
        overrides += [f"stages.{n}.problems_file={DEV_FILE}" for n, s in plan.stages.items() if s.kind == "eval"]
    suffix = "-dev" if args.dev else ""
    results, diffs, seconds = {}, {}, {}
    for seed in args.seeds:
        experiment = f"{plan.root.experiment}-seed{seed}"
        seconds[seed] = run_seed(args.config, seed, overrides, experiment, runs_dir, suffix)
        results[seed] = json.loads((runs_dir / experiment / "results.json").read_text())
        diffs[seed] = json.loads((runs_dir / experiment / "differences.json").read_text())
    text = (f"{'DEV SET: ' if args.dev else ''}{TABLE_TITLE.split(' (')[0]} in % (no-answer %) and "
            f"{DIFF_TITLE.split(' (')[0]}, over seeds {', '.join(map(str, args.seeds))}\n"
            f"`benchmarks/science.py --config {args.config} --seeds {' '.join(map(str, args.seeds))}"
            f"{' --dev' if args.dev else ''}{''.join(' ' + o for o in args.overrides)}`, "
            f"{datetime.date.today().isoformat()}; wall time per seed "
            f"{', '.join(f'{seconds[s]:.0f} s' for s in args.seeds)} (cached stages are not rerun)\n\n"
            + summary(args.seeds, results, diffs))
    (runs_dir / f"{plan.root.experiment}-seeds{suffix}.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
