"""SFT for real under torchrun (2 ranks, gloo), under DeepSpeed ZeRO-3, and killed after a checkpoint + resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import PYTHON, pipeline, run, torchrun

CONFIG = "tests/configs/split_sft.yaml"
# One thread per process, as torchrun sets it: with the 2 cores shared, a 2-thread in-process run of this tiny
# model was ~15x slower (40 s vs 2.7 s for the 6 steps) from thread oversubscription.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def stage_dir(runs: Path, name: str) -> Path:
    (d,) = [p for p in (runs / "split_sft_test").glob(f"{name}-*") if (p / "_DONE.json").exists()]
    return d


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.slow
def test_demo_sft_under_torchrun_two_ranks_saves_a_model_that_reloads_and_generates(tmp_path):
    """The acceptance command on the real demo DAG (bootstrap -> mcts -> split), with the search cut to 6 problems."""
    from transformers import AutoModelForCausalLM

    from marco_train.models import load_tokenizer
    from marco_train.prompts import prompt_ids
    from marco_train.tasks import get_task
    from reference_generation import generate

    args = [f"runs_dir={tmp_path / 'runs'}", "stages.mcts.num_problems=6", "stages.sft.log_every=1"]
    pipeline("configs/demo.yaml", *args, flags=["--until", "split"], env=ONE_THREAD)
    torchrun("launchers/sft.py", "--config", "configs/demo.yaml", *args, nproc=2)
    (out,) = (tmp_path / "runs" / "demo").glob("sft-*")
    done = json.loads((out / "_DONE.json").read_text())
    split_summary = json.loads(next((tmp_path / "runs" / "demo").glob("split-*/summary.json")).read_text())
    assert done["world_size"] == 2 and done["summary"]["samples"] == split_summary["sft"]["rows"] > 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, done["summary"]["steps"] + 1)) + [done["summary"]["steps"]]  # log_every 1 + final
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = load_tokenizer(out / "model", padding_side="left")
    (gen,) = generate(model, tokenizer, [prompt_ids(tokenizer, get_task("toy"), "Compute 12 + 7 - 5.")], 60)
    assert gen.token_ids and gen.text.startswith("<sub_task>")
    (base_dir,) = (tmp_path / "runs" / "demo").glob("bootstrap-*")
    trained, base = weights(out / "model"), weights(base_dir / "model")
    assert max((trained[k] - base[k]).abs().max().item() for k in base) > 1e-5


@pytest.mark.slow
def test_zero3_on_cpu_saves_full_weights_equal_to_the_in_memory_model(tmp_path):
    runs = tmp_path / "runs"
    result = tmp_path / "result.json"
    pipeline(CONFIG, f"runs_dir={runs}", flags=["--until", "split"], env=ONE_THREAD)
    run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/sft_zero3_check.py",
         "--config", CONFIG, "--result", str(result), f"runs_dir={runs}",
         "stages.sft.training.deepspeed=configs/deepspeed/zero3.json", "stages.sft.training.max_steps=2"], timeout=900)
    report = json.loads(result.read_text())
    assert report["zero3_partitioned"] and report["world_size"] == 2
    assert len(report["max_abs_diff"]) == 50 and report["numel"] > 800_000
    assert max(report["max_abs_diff"].values()) == 0.0
    out = stage_dir(runs, "sft")
    trained, base = weights(out / "model"), weights(stage_dir(runs, "bootstrap") / "model")
    assert set(trained) == set(base)  # full weights, not a partition
    assert all(trained[k].shape == base[k].shape for k in base)
    assert max((trained[k] - base[k]).abs().max().item() for k in base) > 1e-4


@pytest.mark.slow
def test_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    pipeline(CONFIG, f"runs_dir={straight}", flags=["--until", "sft"], env=ONE_THREAD)
    killed = pipeline(CONFIG, f"runs_dir={broken}", flags=["--until", "sft"], check=False,
                      env={"MARCO_FAULT": "sft:after_checkpoint:2", **ONE_THREAD})  # dies right after checkpoint-4
    assert killed.returncode != 0 and "MARCO_FAULT: killing" in killed.stdout
    (partial,) = (broken / "split_sft_test").glob("sft-*")
    assert not (partial / "_DONE.json").exists() and not (partial / "model").exists()
    assert sorted(p.name for p in (partial / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    pipeline(CONFIG, f"runs_dir={broken}", flags=["--until", "sft"], env=ONE_THREAD)
    out = stage_dir(broken, "sft")
    assert out.name == stage_dir(straight, "sft").name  # same fingerprint, same directory name
    summary = json.loads((out / "_DONE.json").read_text())["summary"]
    uninterrupted = json.loads((stage_dir(straight, "sft") / "_DONE.json").read_text())["summary"]
    assert summary["resumed_from"] == "checkpoint-4" and uninterrupted["resumed_from"] is None
    assert summary["train_loss"] == pytest.approx(uninterrupted["train_loss"], abs=1e-6)  # all 6 steps, not 5-6
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # lines after the checkpoint were dropped, then logged again
    a, b = weights(stage_dir(straight, "sft") / "model"), weights(out / "model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)] for d in (stage_dir(straight, "sft"), out)]
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], abs=1e-6)
