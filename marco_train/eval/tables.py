"""Result tables of an ablation grid in the paper's layout, with paired intervals and the paper's numbers beside.

A pipeline config's top-level `tables:` maps a table name to rows, each row a label and the eval stage instance
it reads (one eval stage may be a row of several tables: the α = 0 row of the α sweep *is* the +cDPO row):

    tables:
      progressive:
        title: "Table 5: the progressive ablation"
        paper_columns: [GSM8K, MATH]
        rows:
          - {label: SFT, eval: eval_sft, paper: [87.4, 51.4]}
          - {label: +DPO, eval: eval_plain, paper: [86.2, 41.8]}
          - {label: "+masking, mean log-probs", eval: eval_mean, against: +joint loss, ours: true}

`kind: accuracy` (default): per row accuracy with its Wilson 95 % interval, the no-answer rate and the mean
response length, and the paired difference to the row it is compared with (`compare: previous` | `first`, or
the row's own `against: <label>`) on the same problems. `kind: test_at` (Table 7): per row Test@N with its
Wilson interval and tokens@N for N in `test_at`, and the paired difference of solved@N to the row before.

Paired difference: Newcombe's interval (method 10, eval/intervals.py) and the exact McNemar p. The comparisons
of one table are one family, adjusted by Holm's step-down: ordered by p, the j-th (0-based) of m is tested at
level alpha / (m - j) and its interval drawn at confidence 1 - alpha / (m - j); once one is not resolved, none
after it is. A direction counts as the paper's (`matches`) only where that interval excludes 0 on the side of
the paper's own difference; the other side is `opposite`; an interval holding 0 is `not resolved`; `ours`
rows have no paper number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from ..config import ConfigError, load_raw, validate
from .intervals import mcnemar_exact, newcombe_paired, paired_table, wilson

KINDS = ("accuracy", "test_at")
COMPARE = ("previous", "first")


@dataclass
class TableRow:
    label: str = MISSING
    eval: str = MISSING  # the eval stage instance whose samples.jsonl this row reads
    paper: List[Optional[float]] = field(default_factory=list)  # the paper's accuracy, one per paper column (%)
    paper_no_answer: List[Optional[float]] = field(default_factory=list)  # its no-answer rate where it gives one (%)
    against: str = ""  # label of the row this one is compared with ("" = the table's `compare` rule)
    ours: bool = False  # our extension, not a row of the paper (labelled so)


@dataclass
class TableSpec:
    title: str = ""
    kind: str = "accuracy"  # accuracy | test_at
    compare: str = "previous"  # previous | first: the row each row is compared with (unless it says `against`)
    paper_columns: List[str] = field(default_factory=list)  # accuracy: the paper's tasks (test_at: ignored)
    test_at: List[int] = field(default_factory=lambda: [1, 8, 32])
    alpha: float = 0.05  # family-wise error rate of the table's comparisons (Holm)
    rows: List[TableRow] = field(default_factory=list)


def table_specs(plan) -> Dict[str, TableSpec]:
    """The config's tables, validated (schema, kinds, eval stages named, comparisons); raises ConfigError."""
    raw = plan.root.get("tables") or {}
    if not raw:
        return {}
    _, source = load_raw(plan.config_file, plan.overrides)
    specs = {}
    for name, node in raw.items():
        prefix = f"tables.{name}"
        spec = validate(TableSpec, node, prefix, source, label="a result table")
        where = source.where
        if spec.kind not in KINDS or spec.compare not in COMPARE:
            key, allowed = ("kind", KINDS) if spec.kind not in KINDS else ("compare", COMPARE)
            raise ConfigError(f"{where(f'{prefix}.{key}')}: {prefix}.{key}: use one of {', '.join(allowed)}")
        labels = [r.label for r in spec.rows]
        for i, row in enumerate(spec.rows):
            at = f"{prefix}.rows.{i}"
            stage = plan.stages.get(row.eval)
            if stage is None or stage.kind != "eval":
                raise ConfigError(f"{where(at)}: {at}.eval '{row.eval}' is not an eval stage of this config (eval "
                                  f"stages: {', '.join(n for n, s in plan.stages.items() if s.kind == 'eval')})")
            if row.against and row.against not in labels[:i]:
                raise ConfigError(f"{where(at)}: {at}.against '{row.against}' names no row above it")
            if spec.kind == "accuracy" and row.paper and len(row.paper) != len(spec.paper_columns):
                raise ConfigError(f"{where(at)}: {at}.paper has {len(row.paper)} numbers for "
                                  f"{len(spec.paper_columns)} paper_columns")
            if spec.kind == "test_at" and row.paper and len(row.paper) != len(spec.test_at):
                raise ConfigError(f"{where(at)}: {at}.paper has {len(row.paper)} numbers for test_at {spec.test_at}")
        specs[name] = spec
    return specs


def load_records(plan, stage_name: str) -> List[dict]:
    path = plan.stages[stage_name].out_dir / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_problem(records: List[dict]) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for r in records:
        out.setdefault(str(r["id"]), []).append(r)
    return out


def compared_row(spec: TableSpec, i: int) -> Optional[int]:
    row = spec.rows[i]
    if row.against:
        return [r.label for r in spec.rows].index(row.against)
    if i == 0:
        return None
    return i - 1 if spec.compare == "previous" else 0


def holm(ps: List[float], alpha: float) -> List[tuple]:
    """(level, adjusted p, still testing) per comparison, in input order: Holm's step-down (module docstring)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out: List[tuple] = [None] * m
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * ps[i]))
        out[i] = (1 - alpha / (m - j), running)
    return out


def compare_family(pairs: List[tuple], alpha: float) -> List[dict]:
    """pairs: (x, y) per comparison, lists of per-problem correctness on the same problems (x the row, y the row
    it is compared with). Returns per comparison: diff, interval at the Holm level, p, adjusted p, sign
    (+1 / -1 resolved, 0 not resolved)."""
    tables = [paired_table(x, y) for x, y in pairs]
    ps = [mcnemar_exact(t[1], t[2]) for t in tables]
    adjusted = holm(ps, alpha)
    out = [None] * len(pairs)
    stopped = False
    for i in sorted(range(len(pairs)), key=lambda k: ps[k]):
        level, p_adj = adjusted[i]
        a, b, c, d = tables[i]
        lo, hi = newcombe_paired(a, b, c, d, level)
        resolved = not stopped and p_adj < alpha and (lo > 0 or hi < 0)
        stopped = stopped or not resolved
        out[i] = {"diff": (b - c) / (a + b + c + d), "low": lo, "high": hi, "level": level, "p": ps[i],
                  "p_holm": p_adj, "sign": (1 if lo > 0 else -1) if resolved else 0}
    return out


def verdict(sign: int, paper_diff: Optional[float]) -> str:
    if paper_diff is None:
        return "–"
    if paper_diff == 0:
        return "paper: no change" + ("" if sign == 0 else f", ours resolved {'+' if sign > 0 else '-'}")
    if sign == 0:
        return "not resolved"
    return "matches" if (sign > 0) == (paper_diff > 0) else "opposite"


def _pct(x: Optional[float], digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _paper_cell(row: TableRow, c: int) -> str:
    if not row.paper or row.paper[c] is None:
        return "–"
    na = row.paper_no_answer[c] if len(row.paper_no_answer) > c else None
    return f"{row.paper[c]:.1f}" + ("" if na is None else f" ({na:g})")


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def _aligned(plan, spec: TableSpec) -> tuple:
    """(problem ids, {row index: {problem id: records}}) with every row on the same problems."""
    rows = {i: per_problem(load_records(plan, r.eval)) for i, r in enumerate(spec.rows)}
    ids = sorted(rows[0]) if rows else []
    for i, by_id in rows.items():
        if sorted(by_id) != ids:
            raise ConfigError(f"tables: row '{spec.rows[i].label}' ({spec.rows[i].eval}) was evaluated on other "
                              f"problems than row '{spec.rows[0].label}'; paired rows need the same problems")
    return ids, rows


def _paper_diff(spec: TableSpec, i: int, j: int, c: int) -> Optional[float]:
    a, b = spec.rows[i].paper, spec.rows[j].paper
    if spec.rows[i].ours or not a or not b or a[c] is None or b[c] is None:
        return None
    return round(a[c] - b[c], 4)


def same_data_note(plan, spec: TableSpec, i: int, j: int) -> str:
    """A note when the models of rows i and j were trained on identical data from two different split stages
    (e.g. a chosen rule with no choice: every query has one candidate), else ""."""
    from ..data.schema import load_pairs, load_sft
    from ..io import hash_json

    stages = [plan.stages.get(plan.stages[spec.rows[k].eval].inputs.get("model", "")) for k in (i, j)]
    if any(s is None or s.kind not in ("sft", "dpo") or "data" not in s.inputs for s in stages) or \
            stages[0].kind != stages[1].kind or stages[0].inputs["data"] == stages[1].inputs["data"]:
        return ""
    what, load, noun = ("pairs", load_pairs, "pair") if stages[0].kind == "dpo" else ("sft", load_sft, "SFT")
    splits = [plan.stages[s.inputs["data"]] for s in stages]
    if len({hash_json(load(sp.out_dir / what).to_list()) for sp in splits}) > 1:
        return ""
    own = [{k: v for k, v in s.fingerprint_inputs["config"].items() if k != "inputs"} for s in stages]
    same = own[0] == own[1] and stages[0].inputs["model"] == stages[1].inputs["model"]
    return (f"{spec.rows[i].label}: {splits[0].name} and {splits[1].name} wrote identical {noun} sets, so its "
            f"{stages[0].name} trained on the same data as {spec.rows[j].label}'s {stages[1].name}"
            + (" with the same config: the same computation" if same else "") + ".")


def _direction(columns: List[str], sign: int, diffs: List[Optional[float]]) -> str:
    parts = [f"{name}: {verdict(sign, d)}" for name, d in zip(columns, diffs) if d is not None]
    return "; ".join(parts) or "–"


def accuracy_table(plan, spec: TableSpec) -> tuple:
    """(markdown, data) of a `kind: accuracy` table (module docstring)."""
    ids, rows = _aligned(plan, spec)
    first = {i: [by_id[p][0] for p in ids] for i, by_id in rows.items()}  # greedy: one record per problem
    stats = []
    for i in range(len(spec.rows)):
        recs = first[i]
        k = sum(r["correct"] for r in recs)
        stats.append({"label": spec.rows[i].label, "eval": spec.rows[i].eval, "n": len(recs), "accuracy": k / len(recs),
                      "wilson": wilson(k, len(recs)), "no_answer": sum(r["no_answer"] for r in recs) / len(recs),
                      "mean_tokens": sum(r["response_tokens"] for r in recs) / len(recs),
                      "paper": list(spec.rows[i].paper), "paper_no_answer": list(spec.rows[i].paper_no_answer)})
    pairs = [(i, compared_row(spec, i)) for i in range(len(spec.rows))]
    pairs = [(i, j) for i, j in pairs if j is not None]
    family = compare_family([([r["correct"] for r in first[i]], [r["correct"] for r in first[j]]) for i, j in pairs],
                            spec.alpha)
    cols = spec.paper_columns
    header = ["row", "accuracy [95% CI]", "no-answer", "length", "vs", "Δ [Holm-adjusted CI]", "p (Holm)"]
    header += [f"paper {c}" for c in cols] + ["paper Δ", "direction"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_row = dict(zip([i for i, _ in pairs], zip([j for _, j in pairs], family)))
    for i, s in enumerate(stats):
        row = spec.rows[i]
        cells = [row.label + (" (ours)" if row.ours else ""),
                 f"{_pct(s['accuracy'])} [{_pct(s['wilson'][0])}, {_pct(s['wilson'][1])}]",
                 _pct(s["no_answer"]), f"{s['mean_tokens']:.0f}"]
        if i in by_row:
            j, f = by_row[i]
            diffs = [_paper_diff(spec, i, j, c) for c in range(len(cols))]
            s["compare"] = {"against": spec.rows[j].label, **f, "paper_diff": diffs}
            cells += [spec.rows[j].label, f"{_signed(f['diff'])} [{_signed(f['low'])}, {_signed(f['high'])}]",
                      f"{f['p_holm']:.3g}"]
            paper_d = " / ".join("–" if d is None else f"{d:+.1f}" for d in diffs) if any(
                d is not None for d in diffs) else "–"
        else:
            cells += ["–", "–", "–"]
            diffs, paper_d = [], "–"
        cells += [_paper_cell(row, c) for c in range(len(cols))]
        cells += [paper_d, _direction(cols, by_row[i][1]["sign"], diffs) if i in by_row else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [n for n in (same_data_note(plan, spec, i, j) for i, j in pairs) if n]
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    text = (f"**{spec.title}**\n\n" if spec.title else "") + "\n".join(lines) + "\n"
    return text, {"title": spec.title, "kind": spec.kind, "problems": len(ids), "rows": stats, "notes": notes,
                  "paper_columns": list(cols)}


def at_n_table(plan, spec: TableSpec) -> tuple:
    """(markdown, data) of a `kind: test_at` table (Table 7 layout: Test@N and tokens@N per row)."""
    ids, rows = _aligned(plan, spec)
    ns = list(spec.test_at)
    solved = {i: {n: [any(r["correct"] for r in by_id[p][:n]) for p in ids] for n in ns} for i, by_id in rows.items()}
    tokens = {i: {n: sum(sum(r.get("generated_tokens", r["response_tokens"]) for r in by_id[p][:n]) for p in ids)
                  / len(ids) for n in ns} for i, by_id in rows.items()}
    short = [(spec.rows[i].label, n) for i, by_id in rows.items() for n in ns if min(map(len, by_id.values())) < n]
    if short:
        raise ConfigError(f"tables: row '{short[0][0]}' has fewer than {short[0][1]} samples for some problem; "
                          f"raise its samples_per_problem (or search.rollouts) or drop N from test_at")
    header = ["row"] + [x for n in ns for x in (f"Test@{n} [95% CI]", f"tokens@{n}")] + [f"paper @{n}" for n in ns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    stats = []
    for i, row in enumerate(spec.rows):
        cells = [row.label + (" (ours)" if row.ours else "")]
        s = {"label": row.label, "eval": row.eval, "paper": list(row.paper)}
        for n in ns:
            k = sum(solved[i][n])
            lo, hi = wilson(k, len(ids))
            s[f"test@{n}"], s[f"wilson@{n}"], s[f"tokens@{n}"] = k / len(ids), (lo, hi), tokens[i][n]
            cells += [f"{_pct(k / len(ids))} [{_pct(lo)}, {_pct(hi)}]", f"{tokens[i][n]:.0f}"]
        cells += [("–" if not row.paper or row.paper[c] is None else f"{row.paper[c]:.1f}") for c in range(len(ns))]
        stats.append(s)
        lines.append("| " + " | ".join(cells) + " |")
    pairs = [(i, compared_row(spec, i), c) for i in range(len(spec.rows)) for c in range(len(ns))]
    pairs = [(i, j, c) for i, j, c in pairs if j is not None]
    family = compare_family([(solved[i][ns[c]], solved[j][ns[c]]) for i, j, c in pairs], spec.alpha)
    lines += ["", "| row | vs | N | Δ [Holm-adjusted CI] | p (Holm) | paper Δ | direction |", "|---" * 7 + "|"]
    comparisons = []
    for (i, j, c), f in zip(pairs, family):
        d = _paper_diff(spec, i, j, c)
        comparisons.append({"row": spec.rows[i].label, "against": spec.rows[j].label, "n": ns[c], **f, "paper_diff": d})
        lines.append(f"| {spec.rows[i].label} | {spec.rows[j].label} | {ns[c]} | {_signed(f['diff'])} "
                     f"[{_signed(f['low'])}, {_signed(f['high'])}] | {f['p_holm']:.3g} | "
                     f"{'–' if d is None else f'{d:+.1f}'} | {verdict(f['sign'], d)} |")
    text = (f"**{spec.title}**\n\n" if spec.title else "") + "\n".join(lines) + "\n"
    return text, {"title": spec.title, "kind": spec.kind, "problems": len(ids), "rows": stats,
                  "comparisons": comparisons}


def render_tables(plan, specs: Dict[str, TableSpec]) -> tuple:
    """(markdown of every table, {name: data}) for the finished evals of a plan."""
    texts, data = [], {}
    for name, spec in specs.items():
        text, data[name] = (at_n_table if spec.kind == "test_at" else accuracy_table)(plan, spec)
        texts.append(text)
    return "\n".join(texts), data
