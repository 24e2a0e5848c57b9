"""bootstrap -> eval on the toy world through the real pipeline: metrics match the samples, reruns are cached."""

import json

import pytest

from conftest import pipeline
from marco_train import report
from marco_train.pipeline import build_plan


def test_shipped_model_eval_then_cached(tmp_path):
    overrides = [f"runs_dir={tmp_path}", "stages.eval_base.num_problems=12", "stages.eval_base.max_new_tokens=48"]
    first = pipeline("configs/demo.yaml", *overrides, flags=["--until", "eval_base"], env={"WANDB_MODE": "disabled"})
    plan = build_plan("configs/demo.yaml", overrides)
    ev = plan.stages["eval_base"]
    samples = [json.loads(x) for x in (ev.out_dir / "samples.jsonl").read_text().splitlines()]
    metrics = json.loads((ev.out_dir / "metrics.json").read_text())
    assert len(samples) == 12 and metrics["samples"] == 12
    assert metrics["accuracy"] == sum(s["correct"] for s in samples) / 12
    assert metrics["no_answer_rate"] == sum(s["predicted"] is None for s in samples) / 12
    assert all(s["truncated"] == (s["response_tokens"] == 48) for s in samples if s["truncated"])
    assert report.TABLE_TITLE in first.stdout and "| base | " in first.stdout
    second = pipeline("configs/demo.yaml", *overrides, flags=["--until", "eval_base"], env={"WANDB_MODE": "disabled"})
    assert second.stdout.count("cached") >= 2 and "running" not in second.stdout


@pytest.mark.slow
def test_bootstrap_retrain_path(tmp_path):
    overrides = [f"runs_dir={tmp_path}", "stages.bootstrap.retrain=true", "stages.bootstrap.steps=3",
                 "stages.bootstrap.warmup_steps=1", "stages.bootstrap.eval_problems=4",
                 "stages.bootstrap.max_new_tokens=8", "stages.bootstrap.log_every=1"]
    pipeline("configs/demo.yaml", *overrides, flags=["--until", "bootstrap"], env={"WANDB_MODE": "disabled"})
    out = build_plan("configs/demo.yaml", overrides).stages["bootstrap"].out_dir
    record = json.loads((out / "model" / "record.json").read_text())
    assert record["steps"] == 3 and record["heldout_problems"] == 4 and record["samples"] == 4
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    shipped = json.loads(open("marco_train/toy/checkpoint/tokenizer.json").read())["model"]["vocab"]
    assert json.loads((out / "model" / "tokenizer.json").read_text())["model"]["vocab"] == shipped
