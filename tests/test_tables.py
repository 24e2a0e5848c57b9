"""eval/tables.py: Holm's step-down by hand, verdicts against the paper's direction, and the accuracy and Test@N
tables on hand-written samples (a plan-shaped fixture pointing at sample files on disk)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from marco_train.config import ConfigError
from marco_train.eval.intervals import mcnemar_exact, newcombe_paired
from marco_train.eval.tables import (
    TableRow,
    TableSpec,
    accuracy_table,
    at_n_table,
    compare_family,
    holm,
    table_specs,
    verdict,
)


def test_holm_levels_and_adjusted_p_by_hand():
    out = holm([0.01, 0.04, 0.03], alpha=0.05)
    # sorted 0.01, 0.03, 0.04 -> levels 1 - .05/3, 1 - .05/2, 1 - .05/1; adjusted 3*.01, max(.03, 2*.03), max(.06, .04)
    assert out[0] == pytest.approx((1 - 0.05 / 3, 0.03))
    assert out[2] == pytest.approx((1 - 0.05 / 2, 0.06))
    assert out[1] == pytest.approx((1 - 0.05 / 1, 0.06))


def test_step_down_stops_at_the_first_unresolved_comparison():
    n = 40
    strong = ([True] * 30 + [False] * 10, [False] * 30 + [True] * 10)  # b = 30, c = 10
    weak = ([True] * 3 + [False] * 37, [False] * 40)  # b = 3, c = 0: p = 0.25
    down = ([False] * 20 + [True] * 20, [True] * 20 + [True] * 20)  # x worse: b = 0, c = 20
    fam = compare_family([strong, weak, down], alpha=0.05)
    assert [f["p"] for f in fam] == [mcnemar_exact(30, 10), mcnemar_exact(3, 0), mcnemar_exact(0, 20)]
    # order by p: down (rank 0), strong (rank 1), weak (rank 2, not resolved)
    assert fam[2]["level"] == pytest.approx(1 - 0.05 / 3) and fam[0]["level"] == pytest.approx(1 - 0.05 / 2)
    assert (fam[2]["sign"], fam[0]["sign"], fam[1]["sign"]) == (-1, 1, 0)
    assert (fam[0]["low"], fam[0]["high"]) == newcombe_paired(0, 30, 10, 0, 1 - 0.05 / 2)
    assert fam[1]["diff"] == 3 / n


def test_verdicts():
    assert verdict(1, 2.0) == "matches" and verdict(-1, -0.5) == "matches"
    assert verdict(-1, 2.0) == "opposite" and verdict(0, 2.0) == "not resolved"
    assert verdict(0, 0.0) == "paper: no change" and verdict(-1, 0.0) == "paper: no change, ours resolved -"
    assert verdict(1, None) == "–"


def fake_plan(tmp_path: Path, rows: dict):
    """A plan-shaped object: eval stages whose samples.jsonl hold the given records."""
    stages = {}
    for name, records in rows.items():
        out = tmp_path / name
        out.mkdir()
        (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        stages[name] = SimpleNamespace(kind="eval", out_dir=out, inputs={})
    return SimpleNamespace(stages=stages)


def greedy(correct, no_answer=None, tokens=10):
    no_answer = no_answer or [False] * len(correct)
    return [{"id": f"p{i}", "correct": c, "no_answer": na, "response_tokens": tokens}
            for i, (c, na) in enumerate(zip(correct, no_answer))]


def test_accuracy_table_on_hand_written_samples(tmp_path):
    plan = fake_plan(tmp_path, {"e_sft": greedy([True] * 6 + [False] * 4),
                                "e_dpo": greedy([True] * 2 + [False] * 8, [False] * 5 + [True] * 5, tokens=20),
                                "e_ours": greedy([True] * 8 + [False] * 2)})
    spec = TableSpec(title="t", paper_columns=["GSM8K", "MATH"],
                     rows=[TableRow("SFT", "e_sft", [87.4, 51.4]), TableRow("+DPO", "e_dpo", [86.2, 41.8]),
                           TableRow("mean", "e_ours", against="SFT", ours=True)])
    text, data = accuracy_table(plan, spec)
    sft, dpo, ours = data["rows"]
    assert (sft["accuracy"], dpo["accuracy"], dpo["no_answer"], dpo["mean_tokens"]) == (0.6, 0.2, 0.5, 20)
    assert "compare" not in sft
    assert dpo["compare"]["against"] == "SFT" and dpo["compare"]["diff"] == pytest.approx(-0.4)
    assert dpo["compare"]["paper_diff"] == [-1.2, -9.6]
    assert ours["compare"]["against"] == "SFT" and ours["compare"]["paper_diff"] == [None, None]
    lines = text.splitlines()
    assert lines[0] == "**t**"
    assert lines[4] == "| SFT | 60.0 [31.3, 83.2] | 0.0 | 10 | – | – | – | 87.4 | 51.4 | – | – |"  # Wilson 6/10
    assert lines[5].startswith("| +DPO | 20.0 [") and "| 50.0 | 20 | SFT | -40.0 [" in lines[5]
    # b = 0, c = 4: McNemar p = 2/16, not resolved (and the family holds the "mean" row too)
    assert dpo["compare"]["p"] == 0.125 and dpo["compare"]["sign"] == 0
    assert lines[5].endswith("| 86.2 | 41.8 | -1.2 / -9.6 | GSM8K: not resolved; MATH: not resolved |")
    assert lines[6].startswith("| mean (ours) |") and lines[6].endswith("| – | – | – | – |")


def test_the_test_at_n_table_counts_solved_at_n_and_tokens(tmp_path):
    def runs(first_right):  # 4 problems x 4 samples; problem i is first solved at sample first_right[i] (None: never)
        return [{"id": f"p{i}", "correct": k == at, "no_answer": False, "response_tokens": 3, "generated_tokens": 5}
                for i, at in enumerate(first_right) for k in range(4)]
    plan = fake_plan(tmp_path, {"base": runs([0, 2, None, None]), "best": runs([0, 0, 3, None])})
    spec = TableSpec(kind="test_at", test_at=[1, 4], rows=[TableRow("base", "base", [47.0, 75.8]),
                                                            TableRow("best", "best", [51.0, 79.2])])
    text, data = at_n_table(plan, spec)
    base, best = data["rows"]
    assert (base["test@1"], base["test@4"], best["test@1"], best["test@4"]) == (0.25, 0.5, 0.5, 0.75)
    assert base["tokens@1"] == 5 and base["tokens@4"] == 20
    c1, c4 = data["comparisons"]
    assert (c1["n"], c1["diff"], c1["paper_diff"]) == (1, 0.25, 4.0)
    assert (c4["n"], c4["diff"], c4["paper_diff"]) == (4, 0.25, 3.4)
    assert "| best | base | 4 | +25.0 [" in text


def test_table_specs_name_a_missing_eval_stage(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("experiment: x\nstages: {}\ntables:\n  t:\n    rows:\n      - {label: a, eval: nope}\n")
    plan = SimpleNamespace(root=OmegaConf.load(config), config_file=str(config), overrides=[],
                           stages={"e": SimpleNamespace(kind="eval")})
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: tables.t.rows.0.eval 'nope' is not an eval stage"):
        table_specs(plan)


def test_a_note_says_when_two_rows_trained_on_identical_pairs_from_different_splits(tmp_path):
    from marco_train.data.schema import PAIR_COLUMNS, save_rows

    pair = {"id": "q/1-2", "problem_id": "q", "question": "Compute 1 + 2.", "chosen": "<answer>3</answer>",
            "rejected": "<answer>4</answer>", "shared_prefix_len": 2, "chosen_tokens": 5, "rejected_tokens": 5}
    plan = fake_plan(tmp_path, {"e1": greedy([True, False]), "e2": greedy([True, False]), "e3": greedy([True, True])})
    for name, rows in {"s1": [pair], "s2": [pair], "s3": [{**pair, "rejected": "<answer>5</answer>"}]}.items():
        save_rows(rows, PAIR_COLUMNS, tmp_path / name / "pairs")
        plan.stages[name] = SimpleNamespace(kind="split", out_dir=tmp_path / name, inputs={}, name=name)
    for k, (split, eps) in enumerate([("s1", 0.0), ("s2", 0.0), ("s3", 0.0)], start=1):
        plan.stages[f"d{k}"] = SimpleNamespace(kind="dpo", name=f"d{k}", inputs={"data": split, "model": "sft"},
                                               fingerprint_inputs={"config": {"epsilon": eps, "inputs": {}}})
        plan.stages[f"e{k}"].inputs = {"model": f"d{k}"}
    spec = TableSpec(rows=[TableRow("+DPO", "e1"), TableRow("+data balance", "e2"), TableRow("other", "e3")])
    text, data = accuracy_table(plan, spec)
    assert data["notes"] == ["+data balance: s2 and s1 wrote identical pair sets, so its d2 trained on the same "
                             "data as +DPO's d1 with the same config: the same computation."]
    assert text.rstrip().endswith("Note: " + data["notes"][0])  # s3's pairs differ: no note for "other"
