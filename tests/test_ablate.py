"""launchers/ablate.py on a tiny two-row grid (16 searched problems): the search runs once, one table row per
variant, equivalent variants warned about, and the config's `tables:` written with paired intervals."""

import csv
import io
import json

import pytest

from conftest import PYTHON, run
from marco_train.report import CSV_METRICS


@pytest.mark.slow
def test_two_row_grid_runs_search_once_and_writes_the_tables(tmp_path):
    cmd = [PYTHON, "launchers/ablate.py", "--config", "tests/configs/ablation_tiny.yaml", f"runs_dir={tmp_path}"]
    proc = run(cmd, env={"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}, timeout=900)
    out = tmp_path / "ablation_tiny"
    assert len(list(out.glob("mcts-*"))) == 1 and len(list(out.glob("split*-*"))) == 2
    assert proc.stdout.count("mcts: running") == 1
    assert "stages dpo_balance, dpo_balance_masked reduce to the same computation" in proc.stderr
    assert "stages eval_balance, eval_balance_masked reduce to the same computation" in proc.stderr
    table = (out / "ablation.md").read_text().splitlines()
    assert table[0] == "| variant | toy |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| +DPO", "| +data balance", "| +data balance masked"]
    rows = list(csv.reader(io.StringIO((out / "ablation.csv").read_text())))
    assert rows[0] == ["variant"] + [f"toy/{k}" for k in CSV_METRICS] and len(rows) == 4
    assert rows[2][1:] == rows[3][1:]  # the equivalent variants give the same numbers
    assert len(list((out / "_ablation" / "wandb").glob("offline-run-*"))) == 1  # the W&B table's run

    grid = json.loads((out / "tables.json").read_text())["grid"]
    first, second = grid["rows"]
    assert grid["problems"] == 16 and (first["label"], second["label"]) == ("+DPO", "+data balance")
    samples = [json.loads(line) for line in next(out.glob("eval_balance-*")).joinpath("samples.jsonl").open()]
    assert second["accuracy"] == sum(s["correct"] for s in samples) / 16
    compare = second["compare"]
    assert compare["against"] == "+DPO" and compare["paper_diff"] == [0.6, -13.8]
    assert compare["level"] == 0.95  # one comparison: Holm leaves it at 95 %
    assert compare["low"] <= compare["diff"] == second["accuracy"] - first["accuracy"] <= compare["high"]
    text = (out / "tables.md").read_text()
    assert "| +data balance |" in text and "GSM8K: " in text and "**two rows of Table 5**" in text
    assert "Holm-adjusted" in proc.stdout
