"""The paper's ablation tables at several seeds: runs configs/ablations/paper.yaml once per seed (launchers/ablate.py,
so every finished stage is cached) and prints, per table, each row's accuracy at every seed with the mean and
the spread (max - min), and each comparison's verdict at every seed (eval/tables.py: Holm-adjusted paired
interval vs the paper's direction). A direction counts as the paper's only at the seeds where it `matches`.

    python benchmarks/paper_tables.py [--seeds 0 1 2] [--config configs/ablations/paper.yaml] [--no-run] [key=value ...]

--no-run reads the tables.json each seed's run left (runs/<experiment>/seed-<s>/tables.json) without running.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_seed(config: str, seed: int, overrides) -> Path:
    from marco_train.pipeline import build_plan

    subprocess.run([sys.executable, str(REPO / "launchers" / "ablate.py"), "--config", config, f"seed={seed}",
                    *overrides], check=True, cwd=REPO)
    out = build_plan(config, [f"seed={seed}", *overrides]).experiment_dir
    keep = out / f"seed-{seed}"
    keep.mkdir(exist_ok=True)
    for name in ("tables.md", "tables.json", "ablation.md", "ablation.csv"):
        shutil.copy(out / name, keep / name)
    return keep / "tables.json"


def accuracy_lines(name: str, per_seed: dict) -> list:
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]][name]
    columns = first.get("paper_columns") or []
    paper = "".join(f" paper {c} |" for c in columns)
    lines = [f"**{first['title']}** (seeds {', '.join(map(str, seeds))}; accuracy % (no-answer %))", "",
             "| row | " + " | ".join(f"seed {s}" for s in seeds)
             + f" | mean ± spread |{paper} vs | Δ per seed | verdicts |",
             "|" + "---|" * (len(seeds) + 5 + len(columns))]
    for i, row in enumerate(first["rows"]):
        accs = [100 * per_seed[s][name]["rows"][i]["accuracy"] for s in seeds]
        nas = [100 * per_seed[s][name]["rows"][i]["no_answer"] for s in seeds]
        cells = [f"{a:.1f} ({n:.1f})" for a, n in zip(accs, nas)]
        spread = max(accs) - min(accs)
        comp = [per_seed[s][name]["rows"][i].get("compare") for s in seeds]
        if comp[0]:
            deltas = " / ".join(f"{100 * c['diff']:+.1f}" for c in comp)
            verdicts = across_seeds(comp, first.get("paper_columns") or [])
            vs = comp[0]["against"]
        else:
            deltas = verdicts = vs = "–"
        papers = "".join(f" {paper_cell(row, c)} |" for c in range(len(columns)))
        lines.append(f"| {row['label']} | " + " | ".join(cells) +
                     f" | {sum(accs) / len(accs):.1f} ± {spread:.1f} |{papers} {vs} | {deltas} | {verdicts} |")
    return lines


def paper_cell(row: dict, c: int) -> str:
    value = (row.get("paper") or [None] * (c + 1))[c]
    if value is None:
        return "–"
    na = row.get("paper_no_answer") or []
    return f"{value:.1f}" + (f" ({na[c]:g})" if len(na) > c and na[c] is not None else "")


def verdict_text(compare: dict, paper_diff) -> str:
    """One comparison's verdict against one paper difference (None: a row of ours, judged by its sign only)."""
    from marco_train.eval.tables import verdict

    if paper_diff is None:
        return ("resolved " + ("+" if compare["sign"] > 0 else "-")) if compare["sign"] else "not resolved"
    return verdict(compare["sign"], paper_diff)


def across_seeds(comps: list, columns: list) -> str:
    """Per paper column the verdict at every seed ("GSM8K: matches at every seed; MATH: matches, not resolved")."""
    diffs = comps[0]["paper_diff"] if isinstance(comps[0]["paper_diff"], list) else [comps[0]["paper_diff"]]
    parts = []
    for c, name in enumerate(columns or [""]):
        d = diffs[c] if c < len(diffs) else None
        if d is None and columns:
            continue
        per = [verdict_text(comp, d) for comp in comps]
        said = f"{per[0]} at every seed" if len(set(per)) == 1 and len(per) > 1 else ", ".join(per)
        parts.append(f"{name}: {said}" if name else said)
    return "; ".join(parts) or across_seeds(comps, [])


def at_n_lines(name: str, per_seed: dict) -> list:
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]][name]
    lines = [f"**{first['title']}** (seeds {', '.join(map(str, seeds))})", "",
             "| row | N | Test@N per seed | tokens@N per seed | paper | vs | Δ per seed: verdicts |",
             "|---|---|---|---|---|---|---|"]
    comps = {(c["row"], c["n"]): i for i, c in enumerate(first.get("comparisons", []))}
    for i, row in enumerate(first["rows"]):
        for n in sorted(int(key[5:]) for key in row if key.startswith("test@")):
            key = f"test@{n}"
            tests = " / ".join(f"{100 * per_seed[s][name]['rows'][i][key]:.1f}" for s in seeds)
            tokens = " / ".join(f"{per_seed[s][name]['rows'][i][f'tokens@{n}']:.0f}" for s in seeds)
            j = comps.get((row["label"], n))
            if j is None:
                vs, verdicts = "–", "–"
            else:
                cs = [per_seed[s][name]["comparisons"][j] for s in seeds]
                vs = cs[0]["against"]
                verdicts = " / ".join(f"{100 * c['diff']:+.1f}" for c in cs) + ": " + across_seeds(cs, [])
            at = [k for k in sorted(int(key[5:]) for key in row if key.startswith("test@"))].index(n)
            lines.append(f"| {row['label']} | {n} | {tests} | {tokens} | {paper_cell(row, at)} | {vs} | {verdicts} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", default="configs/ablations/paper.yaml")
    p.add_argument("--no-run", action="store_true", help="aggregate the tables.json of earlier runs only")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from marco_train.pipeline import build_plan

    per_seed = {}
    for seed in args.seeds:
        if args.no_run:
            out = build_plan(args.config, [f"seed={seed}", *args.overrides]).experiment_dir
            path = out / f"seed-{seed}" / "tables.json"
        else:
            path = run_seed(args.config, seed, args.overrides)
        per_seed[seed] = json.loads(path.read_text())
    order = list(build_plan(args.config, [f"seed={args.seeds[0]}", *args.overrides]).root.tables)  # the config's
    names = sorted(per_seed[args.seeds[0]], key=lambda n: order.index(n) if n in order else len(order))
    for name in names:
        kind = per_seed[args.seeds[0]][name]["kind"]
        print("\n".join((at_n_lines if kind == "test_at" else accuracy_lines)(name, per_seed)) + "\n")


if __name__ == "__main__":
    main()
