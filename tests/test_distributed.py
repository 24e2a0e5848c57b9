"""Two ranks under torchrun on CPU (gloo): the runner launches the stage, only rank 0 writes, W&B (offline,
the real library) gets one run whose id is reused when the stage is resumed after a kill."""

import json

import pytest

from conftest import pipeline
from marco_train.pipeline import DONE_FILE, build_plan

CONFIG = """experiment: dist
runs_dir: {runs}
wandb: {{mode: offline, project: marco-train-tests}}
stages:
  pair:
    kind: probe_stages.probe
    nproc_per_node: 2
    value: 7
"""


def offline_run_ids(stage_dir):
    return {p.name.rsplit("-", 1)[1] for p in (stage_dir / "wandb").glob("offline-run-*")}


@pytest.mark.slow
def test_torchrun_two_ranks_rank0_writes_and_wandb_run_is_resumed(tmp_path):
    cfg = tmp_path / "dist.yaml"
    cfg.write_text(CONFIG.format(runs=tmp_path / "runs"))
    log = tmp_path / "ran.log"
    env = {"MARCO_PROBE_LOG": str(log), "WANDB_MODE": "offline"}

    killed = pipeline(str(cfg), env={**env, "MARCO_FAULT": "pair:before_done"}, check=False)
    assert killed.returncode != 0
    stage = build_plan(str(cfg)).stages["pair"]
    assert not stage.done and (stage.out_dir / "artifact.txt").exists()
    first_id = (stage.out_dir / "wandb_run_id").read_text().strip()
    assert offline_run_ids(stage.out_dir) == {first_id}

    pipeline(str(cfg), env=env)
    assert sorted(log.read_text().split("\n")[:-1]) == ["pair 0", "pair 0", "pair 1", "pair 1"]  # both ranks, twice
    done = json.loads((stage.out_dir / DONE_FILE).read_text())
    assert done["summary"] == {"total": 7, "rank_sum": 3, "world": 2}  # gloo all_reduce of ranks 1 + 2
    assert done["world_size"] == 2 and done["wandb_run_id"] == first_id
    lines = [json.loads(x) for x in (stage.out_dir / "metrics.jsonl").read_text().splitlines()]
    # rank 0 only; a non-resumable stage is redone, so the killed attempt's metrics were cleared
    assert [x["probe/rank"] for x in lines] == [0.0]
    assert offline_run_ids(stage.out_dir) == {first_id}  # one W&B run, resumed
    assert len(list((stage.out_dir / "wandb").glob("offline-run-*"))) == 2
