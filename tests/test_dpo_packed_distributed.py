"""Packed prefix-shared DPO under torchrun on CPU (gloo): the first step's loss and every parameter gradient equal
the unshared computation (two padded rows per pair) — with gradient checkpointing on and off, on 1 and 2 ranks,
with token budgets 256 and 1,024, under DDP and under DeepSpeed ZeRO-3 (gradients gathered with
safe_get_full_grad). The runs are tests/dpo_grad_check.py; with SGD the update is lr x gradient, so equal
gradients are equal updates."""

import json

import pytest
from safetensors.torch import load_file

from conftest import torchrun

ENV = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}  # conftest.run puts tests/ on PYTHONPATH


def launch(out, *runs, nproc=2, deepspeed=None, flags=(), timeout=900):
    flags = (*flags, "--deepspeed", deepspeed) if deepspeed else tuple(flags)
    torchrun("tests/dpo_grad_check.py", "--out", str(out), *flags, *runs, nproc=nproc, env=ENV, timeout=timeout)
    return {run.split(":")[0]: (json.loads((out / f"{run.split(':')[0]}.json").read_text()),
                                load_file(str(out / f"{run.split(':')[0]}.safetensors"))) for run in runs}


def assert_same_step(got, want, label):
    (info, grads), (want_info, want_grads) = got, want
    assert info["loss"] == pytest.approx(want_info["loss"], abs=1e-6), label
    assert grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        scale = g.abs().max().item()
        assert scale > 0, (label, name)  # every parameter is reached
        assert (grads[name] - g).abs().max().item() <= 1e-5 * scale, (label, name)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("ddp"), "unshared:unshared:0", "ps:packed_shared:256",
                  "ps_gc:packed_shared:256:gc", "packed:packed:256", "ps_1024:packed_shared:1024")


@pytest.mark.slow
def test_ddp_two_ranks_and_one_rank_budgets_256_and_1024(ddp, tmp_path):
    unshared = ddp["unshared"]
    assert unshared[0]["world_size"] == 2 and not unshared[0]["checkpointing"]
    for name in ("ps", "ps_gc", "packed", "ps_1024"):
        assert_same_step(ddp[name], unshared, name)
    assert ddp["ps_gc"][0]["checkpointing"] and not ddp["ps"][0]["checkpointing"]
    small, large = ddp["ps"][0]["micro_batches"], ddp["ps_1024"][0]["micro_batches"]
    assert small[0] == small[1] >= 3 and large[0] == large[1] < small[0]  # same count on both ranks
    one = launch(tmp_path, "ps_1024:packed_shared:1024", "ps:packed_shared:256:gc", nproc=1)
    assert one["ps"][0]["world_size"] == 1
    for name, run in one.items():
        assert_same_step(run, unshared, f"1 rank {name}")


@pytest.mark.slow
def test_zero3_two_ranks(ddp, tmp_path):
    zero3 = launch(tmp_path, "ps:packed_shared:256", "ps_gc:packed_shared:256:gc", "unshared:unshared:0",
                   deepspeed="configs/deepspeed/zero3.json")
    assert all(info["zero3"] and info["world_size"] == 2 for info, _ in zero3.values())
    for name, run in zero3.items():
        assert_same_step(run, ddp["unshared"], f"ZeRO-3 {name}")


@pytest.mark.slow
def test_a_step_with_fewer_pairs_than_ranks_finishes_and_logs_its_pair(tmp_path):
    """9 pairs, global batch 8: step 2 has one pair, so rank 1 takes a weight-0 copy. Both ranks must still log
    collectively (a rank-dependent reduction hung here), and step 2 logs that one pair, as on one rank."""
    two = launch(tmp_path / "two", "ps:packed_shared:256", flags=("--pairs", "9", "--steps", "2"), timeout=300)
    one = launch(tmp_path / "one", "ps:packed_shared:256", flags=("--pairs", "9", "--steps", "2"), nproc=1,
                 timeout=300)
    logged, alone = two["ps"][0]["logged"], one["ps"][0]["logged"]
    assert [m["step"] for m in logged] == [1, 2] and two["ps"][0]["world_size"] == 2
    for a, b in zip(logged, alone):
        for name in ("loss", "loss/dpo", "loss/sft", "logps/chosen", "rewards/margins"):
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), (a["step"], name)
