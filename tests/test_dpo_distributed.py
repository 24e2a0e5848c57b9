"""The dpo stage under `torchrun --nproc_per_node=2` on CPU (gloo): DDP vs DeepSpeed ZeRO-3, kill and resume.

Upstream data: the test stage kind `dpo_stages.handmade` (toy pairs + tiny random Qwen2), run in-process first.

ZeRO-3 tolerance: ZeRO-3 reduce-scatters fp32 gradients in partitions and buckets while DDP all-reduces whole
buckets, so the summation order differs and the gradients differ by float rounding (~1e-6 of each tensor's
largest entry: tests/test_dpo_packed_distributed.py compares them directly). AdamW then divides each gradient
entry by its own running RMS, so an entry whose gradient is near AdamW's eps (1e-8) turns that rounding into a
visible fraction of the learning rate (1e-2): the logged losses over a few steps must agree to 1e-5 absolute and
the saved weights to 1e-4 (1.2e-5 measured after 3 steps, the weights moving by up to 3e-2).
"""

from pathlib import Path

import pytest
import yaml

from conftest import torchrun
from dpo_testlib import read_metrics
from marco_train.pipeline import build_plan, run_plan

ENV = {"WANDB_MODE": "disabled"}  # conftest.run puts tests/ on PYTHONPATH, keeping the caller's (a clone's code)
ZERO3 = "configs/deepspeed/zero3.json"


def write_config(tmp_path: Path, **training) -> str:
    train = {"global_batch_size": 4, "per_device_batch_size": 1, "learning_rate": 1.0e-2, "max_steps": 3,
             "save_steps": 1, "max_length": 512, **training}
    config = {"experiment": "a", "runs_dir": str(tmp_path / "runs"), "seed": 0, "wandb": {"mode": "disabled"},
              "stages": {"upstream": {"kind": "dpo_stages.handmade", "n_pairs": 8},
                         "dpo": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "log_every": 1,
                                 "nproc_per_node": 2, "training": train}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def prepare(config: str, *overrides: str):
    """Run the upstream stage in-process; return the dpo stage directory these overrides give."""
    plan = build_plan(config, list(overrides))
    run_plan(plan, until="upstream")
    return plan.stages["dpo"].out_dir


def launch(config: str, *overrides: str, env=None, check=True):
    return torchrun("launchers/dpo.py", "--config", config, *overrides, env={**ENV, **(env or {})}, check=check)


def weights(stage_dir: Path):
    from marco_train.models import load_model

    return dict(load_model(stage_dir / "model").named_parameters())


@pytest.mark.slow
def test_zero3_matches_ddp_and_its_saved_weights_reload(tmp_path):
    """DDP vs ZeRO-3 with the cached reference and with the frozen reference model (sharded too); sharing on."""
    config = write_config(tmp_path)
    ddp_dir = prepare(config)
    launch(config)
    zero3 = (f"stages.dpo.training.deepspeed={ZERO3}",)
    zero3_dir = prepare(config, *zero3)
    launch(config, *zero3)
    frozen = (*zero3, "stages.dpo.reference.mode=model")  # the reference model sharded under ZeRO-3 too
    frozen_dir = prepare(config, *frozen)
    launch(config, *frozen)

    ddp = read_metrics(ddp_dir)
    assert [m["step"] for m in ddp] == [1, 2, 3] and ddp[-1]["rewards/margins"] != 0
    for other in (read_metrics(zero3_dir), read_metrics(frozen_dir)):
        assert [m["step"] for m in other] == [1, 2, 3]
        for a, b in zip(ddp, other):
            for name in ("loss", "loss/dpo", "loss/sft", "rewards/margins", "logps/chosen"):
                assert a[name] == pytest.approx(b[name], abs=1e-5), (a["step"], name)
    reference = weights(ddp_dir)
    for stage_dir in (zero3_dir, frozen_dir):
        saved = weights(stage_dir)  # full (gathered) tensors, not ZeRO-3 placeholders
        assert saved.keys() == reference.keys()
        for name, p in saved.items():
            assert p.shape == reference[name].shape and p.numel() > 0
            assert (p - reference[name]).abs().max().item() < 1e-4, name


@pytest.mark.slow
def test_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    config = write_config(tmp_path, max_steps=4, save_steps=2)
    unshared = ("stages.dpo.prefix_sharing=false",)  # the DDP path without prefix sharing runs here
    straight_dir = prepare(config, *unshared)
    launch(config, *unshared)

    resumed = ("experiment=b", *unshared)
    resumed_dir = prepare(config, *resumed)
    killed = launch(config, *resumed, env={"MARCO_FAULT": "dpo:after_checkpoint"}, check=False)
    assert killed.returncode != 0
    assert "MARCO_FAULT: killing" in killed.stdout
    assert (resumed_dir / "checkpoints" / "checkpoint-2").is_dir() and not (resumed_dir / "_DONE.json").exists()
    assert not (resumed_dir / "checkpoints" / "checkpoint-4").exists()
    rerun = launch(config, *resumed)
    assert "resuming from" in rerun.stdout and "checkpoint-2" in rerun.stdout

    import json

    summary = json.loads((resumed_dir / "_DONE.json").read_text())["summary"]
    uninterrupted = json.loads((straight_dir / "_DONE.json").read_text())["summary"]
    assert summary["prefix_sharing"]["on"] is False and summary["resumed_from"] == "checkpoint-2"
    assert summary["train_loss"] == pytest.approx(uninterrupted["train_loss"], abs=1e-6)  # all 4 steps, not 3-4
    want, got = weights(straight_dir), weights(resumed_dir)
    for name, p in want.items():
        assert (p - got[name]).abs().max().item() <= 1e-6, name
    a, b = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert [m["step"] for m in b] == [1, 2, 3, 4]  # lines after the checkpoint were dropped, then logged again
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)


@pytest.mark.slow
def test_demo_config_dpo_stage_under_torchrun(tmp_path, toy_tokenizer):
    """`torchrun --nproc_per_node=2 launchers/dpo.py --config configs/demo.yaml` with the demo's own dpo block.

    Its upstream stages are satisfied another way (the full demo's mcts takes minutes): the split stage's
    directory gets hand-made toy pairs, the sft stage's the shipped toy model, each with a _DONE.json.
    """
    import json
    import shutil

    from dpo_testlib import save_pairs, toy_pairs

    overrides = (f"runs_dir={tmp_path / 'runs'}", "stages.dpo.log_every=1")  # a metrics line per step
    plan = build_plan("configs/demo.yaml", list(overrides))
    split_dir, sft_dir = plan.stages["split"].out_dir, plan.stages["sft"].out_dir
    save_pairs(toy_pairs(toy_tokenizer, 12, seed=5), split_dir)
    (split_dir / "summary.json").write_text(json.dumps({"task": "toy"}))
    shutil.copytree("marco_train/toy/checkpoint", sft_dir / "model")
    for d in (split_dir, sft_dir):
        (d / "_DONE.json").write_text("{}")

    launch("configs/demo.yaml", "--stage", "dpo", *overrides)
    dpo_dir = plan.stages["dpo"].out_dir
    done = json.loads((dpo_dir / "_DONE.json").read_text())
    assert done["world_size"] == 2 and done["summary"]["pairs"]["kept"] == 12
    assert done["summary"]["prefix_sharing"]["on"] and done["summary"]["reference"] == "cached"
    logged = read_metrics(dpo_dir)
    assert [m["step"] for m in logged] == list(range(1, len(logged) + 1)) and len(logged) >= 3
    # the demo's joint loss (alpha 4) is mostly its SFT term: the chosen responses became likelier than the reference
    assert logged[-1]["rewards/chosen"] > 0 and logged[-1]["logps/chosen"] > logged[0]["logps/chosen"]
    from marco_train.models import load_model

    load_model(dpo_dir / "model")
