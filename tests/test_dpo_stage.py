"""The dpo stage end to end, in-process: logged losses against a direct computation, frozen vs cached reference.

Upstream data comes from the test stage kind `dpo_stages.handmade` (toy pairs + a tiny random Qwen2), so these
tests do not depend on the split and sft stages. At step 1 policy == reference and every variant logs ln 2; from
step 2 on (lr > 0) they differ, and each logged loss must equal the loss computed directly — full logits, one
unpadded sequence at a time, formulas written out in tests/dpo_testlib.py — from the weights the step started
from (checkpoint-(s-1)) and the starting model.
"""

import math
from pathlib import Path

import pytest
import yaml

from dpo_testlib import plain_loss, plain_segment_logps, read_metrics
from marco_train.models import load_model, load_tokenizer
from marco_train.pipeline import build_plan, run_plan
from marco_train.tasks import get_task
from marco_train.train.dpo_data import tokenize_pairs


def write_config(tmp_path: Path, dpo: dict = None, upstream: dict = None, wandb_mode: str = "disabled") -> str:
    # every checkpoint kept (save_total_limit 0): direct_losses reloads the weights each step started from
    training = {"global_batch_size": 4, "per_device_batch_size": 2, "learning_rate": 1.0e-2, "max_steps": 4,
                "save_steps": 1, "save_total_limit": 0, "max_length": 512}
    stage = {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "log_every": 1, "training": training}
    for key, value in (dpo or {}).items():
        (stage["training"] if key in training else stage)[key] = value
    config = {"experiment": "t", "runs_dir": str(tmp_path / "runs"), "seed": 0, "wandb": {"mode": wandb_mode},
              "stages": {"upstream": {"kind": "dpo_stages.handmade", "n_pairs": 4, **(upstream or {})}, "dpo": stage}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run(config: str, *overrides: str):
    plan = build_plan(config, list(overrides))
    run_plan(plan)
    return plan.stages["upstream"].out_dir, plan.stages["dpo"].out_dir


def direct_losses(upstream: Path, dpo_dir: Path, steps: int, reference_dir: Path = None, **loss_kwargs):
    """[(mean dpo, mean sft)] per step from the checkpoints, by the plain computation."""
    from datasets import load_from_disk

    tokenizer = load_tokenizer(upstream / "model")
    examples, _ = tokenize_pairs(load_from_disk(str(upstream / "pairs")), tokenizer, get_task("toy"), 512)
    start = load_model(upstream / "model", dtype="fp32")
    ref_model = load_model(reference_dir, dtype="fp32") if reference_dir else start
    reference = [plain_segment_logps(ref_model, e) for e in examples]
    counts = [[len(e["prefix_ids"]), len(e["chosen_ids"]), len(e["prefix_ids"]), len(e["rejected_ids"])]
              for e in examples]
    out = []
    for step in range(1, steps + 1):
        policy = start if step == 1 else load_model(dpo_dir / "checkpoints" / f"checkpoint-{step - 1}", dtype="fp32")
        dpo, sft = plain_loss([plain_segment_logps(policy, e) for e in examples], reference, counts, **loss_kwargs)
        out.append((sum(dpo) / len(dpo), sum(sft) / len(sft)))
    return out


@pytest.mark.slow
def test_logged_losses_equal_direct_computation_and_frozen_equals_cached(tmp_path):
    config = write_config(tmp_path, wandb_mode="offline")
    upstream, cached_dir = run(config)
    logged = read_metrics(cached_dir)
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected", "loss/dpo", "loss/sft"):
        assert all(name in m for m in logged), name
    assert logged[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-6)  # step 1: policy == reference
    assert all(m["loss/dpo"] < math.log(2) - 1e-3 for m in logged[1:])  # the reference differs from then on

    for m, (dpo, sft) in zip(logged, direct_losses(upstream, cached_dir, 4)):
        assert m["loss/dpo"] == pytest.approx(dpo, abs=1e-5)
        assert m["loss/sft"] == pytest.approx(sft, abs=1e-5)
        assert m["loss"] == pytest.approx(dpo + 1.0 * sft, abs=1e-4)
    assert list((tmp_path / "runs" / "t" / "_cache" / "reference_logps").glob("*.safetensors"))
    assert list((cached_dir / "wandb").glob("offline-run-*")), "the tracker's offline W&B run"

    # The same run with a frozen reference model running every step: the same losses.
    _, frozen_dir = run(config, "stages.dpo.reference.mode=model")
    assert frozen_dir != cached_dir
    for a, b in zip(logged, read_metrics(frozen_dir)):
        for name in ("loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert a[name] == pytest.approx(b[name], abs=1e-5), (a["step"], name)

    # The final save is the last step's weights, loadable as a plain checkpoint.
    import torch

    final = load_model(cached_dir / "model")
    last = load_model(cached_dir / "checkpoints" / "checkpoint-4")
    for (n, p), (_, q) in zip(final.named_parameters(), last.named_parameters()):
        assert torch.equal(p, q), n
    assert not (cached_dir / "model" / "training_args.bin").exists()
    assert load_tokenizer(cached_dir / "model").eos_token == "<|im_end|>"


def test_unmasked_mean_variant_and_unshared_layout_match_direct_computation(tmp_path):
    config = write_config(tmp_path, dpo={"max_steps": 3, "mask_prefix": False, "mask_sft_prefix": False,
                                         "logp_reduction": "mean", "epsilon": 0.0, "alpha": 0.5, "beta": 2.0,
                                         "prefix_sharing": False})
    upstream, dpo_dir = run(config)
    logged = read_metrics(dpo_dir)
    direct = direct_losses(upstream, dpo_dir, 3, beta=2.0, epsilon=0.0, masked=False, reduction="mean")
    for m, (dpo, sft) in zip(logged, direct):
        assert m["loss/dpo"] == pytest.approx(dpo, abs=1e-5) and m["loss/sft"] == pytest.approx(sft, abs=1e-5)
        assert m["loss"] == pytest.approx(dpo + 0.5 * sft, abs=1e-4)
    assert logged[-1]["loss/dpo"] < math.log(2) - 1e-3 and logged[-1]["rewards/margins"] > 1e-3


def test_explicit_reference_and_gradient_checkpointing(tmp_path):
    """A reference that differs from the policy from step 1 (another checkpoint); checkpointing changes nothing."""
    from dpo_testlib import save_model, tiny_model

    tokenizer = load_tokenizer("marco_train/toy/checkpoint")
    other = save_model(tiny_model(tokenizer, seed=7), tokenizer, tmp_path / "other")
    config = write_config(tmp_path, dpo={"max_steps": 2, "reference": {"name_or_path": str(other)}})
    upstream, plain_dir = run(config)
    _, checkpointed_dir = run(config, "stages.dpo.training.gradient_checkpointing=true")
    logged = read_metrics(plain_dir)
    assert abs(logged[0]["loss/dpo"] - math.log(2)) > 1e-2
    for m, (dpo, sft) in zip(logged, direct_losses(upstream, plain_dir, 2, reference_dir=other)):
        assert m["loss/dpo"] == pytest.approx(dpo, abs=1e-5) and m["loss/sft"] == pytest.approx(sft, abs=1e-5)
    for a, b in zip(logged, read_metrics(checkpointed_dir)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_lora_reference_is_the_base_with_adapters_off(tmp_path):
    config = write_config(tmp_path, dpo={"max_steps": 2, "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}})
    _, cached_dir = run(config)
    _, frozen_dir = run(config, "stages.dpo.reference.mode=model")  # adapters switched off each step
    for a, b in zip(read_metrics(cached_dir), read_metrics(frozen_dir)):
        assert a["loss/dpo"] == pytest.approx(b["loss/dpo"], abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-6)
    assert read_metrics(cached_dir)[-1]["rewards/margins"] != 0
    saved = sorted(p.name for p in (cached_dir / "model").iterdir())
    assert "model.safetensors" in saved and "adapter_config.json" not in saved  # merged into a plain model
    load_model(cached_dir / "model")


def test_bad_keys_are_config_errors_at_plan_time(tmp_path):
    from marco_train.config import ConfigError

    config = write_config(tmp_path, dpo={"reference": {"mode": "live"}})
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: stages.dpo.reference.mode='live': use cached or model"):
        build_plan(config)
    config = write_config(tmp_path, dpo={"epsilon": 0.7})
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: stages.dpo.epsilon=0.7: .* must be in \[0, 0.5\)"):
        build_plan(config)
    with pytest.raises(ConfigError, match="override 'stages.dpo.logp_reduction=max'.*use sum or mean"):
        build_plan(write_config(tmp_path), ["stages.dpo.logp_reduction=max"])


def test_variants_the_algebra_makes_equal_are_flagged_equivalent(tmp_path):
    from marco_train.pipeline import equivalent_stages

    config = {"experiment": "t", "runs_dir": str(tmp_path / "runs"), "stages": {
        "upstream": {"kind": "dpo_stages.handmade"},
        "sum_masked": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}},
        "sum_unmasked": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "mask_prefix": False},
        "mean_unmasked": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "mask_prefix": False,
                          "logp_reduction": "mean"},
        "no_sft": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "alpha": 0.0},
        "no_sft_unmasked": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "alpha": 0.0,
                            "mask_sft_prefix": False}}}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(config))
    groups = sorted(sorted(g) for g in equivalent_stages(build_plan(str(path))))
    assert groups == [["no_sft", "no_sft_unmasked"], ["sum_masked", "sum_unmasked"]]


def test_a_non_finite_loss_stops_training_naming_the_pairs(tmp_path, toy_tokenizer):
    import torch

    from dpo_testlib import dpo_trainer, tiny_model, toy_pairs

    examples, _ = tokenize_pairs(toy_pairs(toy_tokenizer, 2), toy_tokenizer, get_task("toy"), 512)
    for e in examples:
        e["ref_logps"] = [0.0, float("nan"), 0.0, -1.0]  # a corrupted reference cache entry
    trainer = dpo_trainer(tiny_model(toy_tokenizer), examples, tmp_path, toy_tokenizer.pad_token_id, budget=4096,
                          global_batch=2)
    with pytest.raises(FloatingPointError, match=r"non-finite DPO loss at step 0 on pairs \[\d, \d\]"):
        trainer.train()
    assert not torch.isnan(next(trainer.model.parameters())).any()  # no update was applied


@pytest.mark.slow
def test_beta_scale_multiplies_beta_by_the_mean_scored_tokens_of_the_pairs(tmp_path):
    import json

    from datasets import load_from_disk

    config = write_config(tmp_path, dpo={"max_steps": 2, "logp_reduction": "mean", "beta_scale": "mean_scored_tokens",
                                         "epsilon": 0.0, "alpha": 0.0})
    upstream, dpo_dir = run(config)
    examples, _ = tokenize_pairs(load_from_disk(str(upstream / "pairs")), load_tokenizer(upstream / "model"),
                                 get_task("toy"), 512)
    suffixes = [len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples]  # masked: the suffixes are scored
    beta = 0.1 * sum(suffixes) / (2 * len(examples))
    assert json.loads((dpo_dir / "_DONE.json").read_text())["summary"]["beta_effective"] == pytest.approx(beta)
    logged = read_metrics(dpo_dir)
    direct = direct_losses(upstream, dpo_dir, 2, beta=beta, epsilon=0.0, masked=True, reduction="mean")
    assert logged[1]["loss/dpo"] == pytest.approx(direct[1][0], abs=1e-5)  # step 2: the margin at that beta
