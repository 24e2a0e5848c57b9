"""launchers/ablate.py on a tiny grid: the search runs once, one table row per variant, equivalence warned."""

import csv
import io

import pytest

from conftest import PYTHON, run
from marco_train.report import CSV_METRICS


@pytest.mark.slow
def test_ablation_grid_runs_search_once_and_writes_the_table(tmp_path):
    cmd = [PYTHON, "launchers/ablate.py", "--config", "tests/configs/ablation_tiny.yaml", f"runs_dir={tmp_path}"]
    proc = run(cmd, env={"WANDB_MODE": "offline"}, timeout=900)
    out = tmp_path / "ablation_tiny"
    assert len(list(out.glob("mcts-*"))) == 1 and len(list(out.glob("split-*"))) == 1
    assert proc.stdout.count("mcts: running") == 1
    assert "stages dpo_plain, dpo_plain_masked reduce to the same computation" in proc.stderr
    assert "stages eval_plain, eval_plain_masked reduce to the same computation" in proc.stderr
    table = (out / "ablation.md").read_text().splitlines()
    assert table[0] == "| variant | toy |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| SFT", "| +DPO", "| +DPO masked", "| full method"]
    rows = list(csv.reader(io.StringIO((out / "ablation.csv").read_text())))
    assert rows[0] == ["variant"] + [f"toy/{k}" for k in CSV_METRICS] and len(rows) == 5
    assert rows[2][1:] == rows[3][1:]  # the equivalent variants give the same numbers
    assert "| SFT |" in proc.stdout
    assert len(list((out / "_ablation" / "wandb").glob("offline-run-*"))) == 1  # the W&B table's run
