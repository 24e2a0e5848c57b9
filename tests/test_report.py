"""The result tables on a hand-made case: a real plan (base -> SFT -> DPO, one eval on another problem set),
hand-written per-problem results in the eval stages' samples.jsonl, and the printed cells, comparisons and
files checked against values computed by hand (the interval formulas are tested in test_intervals.py)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from marco_train import report
from marco_train.eval.intervals import paired_bootstrap
from marco_train.pipeline import build_plan

CONFIG = """
experiment: tiny
runs_dir: {runs}
stages:
  bootstrap: {{kind: bootstrap}}
  mcts: {{kind: mcts, inputs: {{model: bootstrap}}, num_problems: 4}}
  split: {{kind: split, inputs: {{trees: mcts, model: bootstrap}}}}
  sft: {{kind: sft, inputs: {{data: split, model: bootstrap}}}}
  dpo: {{kind: dpo, inputs: {{data: split, model: sft}}}}
  eval_base: {{kind: eval, variant: base, inputs: {{model: bootstrap}}}}
  eval_sft: {{kind: eval, variant: SFT, inputs: {{model: sft}}}}
  eval_dpo: {{kind: eval, variant: DPO, inputs: {{model: dpo}}}}
  dev_dpo: {{kind: eval, variant: DPO dev, inputs: {{model: dpo}}, problems_file: mcts_data/problems/toy_dev.jsonl}}
"""
# ten problems: base right on 1-4; SFT on 1-3 and 5-9; DPO on 1-3, 5-9 and 10 (not 4)
BASE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
SFT = [1, 1, 1, 0, 1, 1, 1, 1, 1, 0]
DPO = [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]


def write_eval(plan, name, correct, prefix="toy-h", no_answer=()):
    s = plan.stages[name]
    s.out_dir.mkdir(parents=True)
    rows = [{"id": f"{prefix}{i:05d}", "correct": bool(c), "no_answer": i in no_answer} for i, c in enumerate(correct)]
    (s.out_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"task": "toy", "metrics": {"samples": len(rows), "accuracy": sum(correct) / len(rows),
                                       "no_answer_rate": len(no_answer) / len(rows)}}


@pytest.fixture
def case(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG.format(runs=tmp_path / "runs"))
    plan = build_plan(str(path))
    results = {"eval_base": write_eval(plan, "eval_base", BASE, no_answer=(5, 6)),
               "eval_sft": write_eval(plan, "eval_sft", SFT), "eval_dpo": write_eval(plan, "eval_dpo", DPO),
               "dev_dpo": write_eval(plan, "dev_dpo", DPO, prefix="toy-d")}
    return plan, results


def test_lineage_follows_the_model_inputs(case):
    plan, _ = case
    assert report.lineage(plan, "dpo") == ["dpo", "sft", "bootstrap"]
    assert report.model_of(plan, plan.stages["eval_sft"]) == "sft"


def test_cells_carry_the_wilson_interval_and_the_no_answer_rate(case):
    plan, results = case
    header, rows, raw = report.table(plan, results)
    assert header == ["variant", "toy"]
    # Wilson 4/10: centre (0.4 + z^2/20) / (1 + z^2/10), half-width z sqrt(.024 + z^2/400) / (1 + z^2/10)
    assert rows[0] == ["base", "40.0% [16.8, 68.7] (20.0%)"]
    assert rows[1] == ["SFT", "80.0% [49.0, 94.3] (0.0%)"]  # 8/10, the example of test_intervals.py
    assert rows[2] == ["DPO", "90.0% [59.6, 98.2] (0.0%)"]
    i = 1 + report.CSV_METRICS.index("wilson_low")
    assert raw[0][i:i + 2] == pytest.approx([0.16818033, 0.68732623])


def test_each_variant_is_compared_with_the_evals_of_its_ancestors_on_the_same_problems(case):
    plan, results = case
    diffs = report.comparisons(plan, results)
    # dev_dpo ran on other problems (toy-d ids): compared with nothing
    assert [(d["variant"], d["baseline"]) for d in diffs] == [("SFT", "base"), ("DPO", "base"), ("DPO", "SFT")]
    sft_base, dpo_base, dpo_sft = diffs
    # SFT vs base: both right 3 (1-3), only SFT 5 (5-9), only base 1 (4), neither 1 (10)
    assert (sft_base["both"], sft_base["only_first"], sft_base["only_second"], sft_base["neither"]) == (3, 5, 1, 1)
    assert sft_base["difference"] == pytest.approx(0.4)
    assert sft_base["mcnemar_p"] == 14 / 64  # 2 P(X <= 1), X ~ Bin(6, 1/2) = 2 (1 + 6) / 64
    # Newcombe method 10 for (3, 5, 1, 1): ad - bc = -2 < 0, phi = -2 / sqrt(8 * 2 * 4 * 6); Wilson 8/10 and 4/10
    phi, (l1, u1), (l2, u2) = -2 / math.sqrt(8 * 2 * 4 * 6), (0.49016247, 0.94331785), (0.16818033, 0.68732623)
    low = 0.4 - math.sqrt((0.8 - l1) ** 2 - 2 * phi * (0.8 - l1) * (u2 - 0.4) + (u2 - 0.4) ** 2)
    high = 0.4 + math.sqrt((u1 - 0.8) ** 2 - 2 * phi * (u1 - 0.8) * (0.4 - l2) + (0.4 - l2) ** 2)
    assert (sft_base["newcombe_low"], sft_base["newcombe_high"]) == pytest.approx((low, high), abs=1e-7)
    assert (low, high) == pytest.approx((-0.04354, 0.68471), abs=1e-5)
    # DPO vs SFT: only DPO 1 (10), only SFT 0: McNemar 2 P(X <= 0), X ~ Bin(1, 1/2) = 1
    assert (dpo_sft["only_first"], dpo_sft["only_second"], dpo_sft["mcnemar_p"]) == (1, 0, 1.0)
    assert dpo_base["difference"] == pytest.approx(0.5) and dpo_base["only_first"] == 6
    assert (dpo_base["bootstrap_low"], dpo_base["bootstrap_high"]) == paired_bootstrap(DPO, BASE, 10_000, 0)
    text, _ = report.tables_text(plan, results)
    assert "| SFT − base | +40.0 [-4.4, +68.5] p=0.219 (+5/−1) |" in text
    assert "| DPO − SFT | +10.0 [" in text


def test_files_hold_both_intervals(case, capsys):
    plan, results = case
    report.print_report(plan, results)
    out = capsys.readouterr().out
    assert report.TABLE_TITLE in out and report.DIFF_TITLE in out
    rows = list(csv.DictReader(io.StringIO((plan.experiment_dir / "differences.csv").read_text())))
    assert [(r["variant"], r["baseline"]) for r in rows] == [("SFT", "base"), ("DPO", "base"), ("DPO", "SFT")]
    assert float(rows[0]["difference"]) == pytest.approx(0.4) and rows[0]["only_first"] == "5"
    saved = json.loads((plan.experiment_dir / "differences.json").read_text())
    assert saved[0]["bootstrap_low"] == pytest.approx(float(rows[0]["bootstrap_low"]))
    entries = json.loads((plan.experiment_dir / "results.json").read_text())
    assert [e["variant"] for e in entries] == ["base", "SFT", "DPO", "DPO dev"]
    assert entries[0]["wilson_high"] == pytest.approx(0.68732623)
