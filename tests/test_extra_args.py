"""training.extra_args: TrainingArguments keys a stage does not set itself reach the Trainer; a key the stage sets
is refused by name at plan time, as are unknown keys and values of the wrong type."""

import json
from pathlib import Path

import pytest

from conftest import pipeline
from marco_train.config import ConfigError
from marco_train.pipeline import build_plan


@pytest.mark.parametrize("override, message", [
    ("stages.sft.training.extra_args.seed=3",
     "stages.sft.training.extra_args: 'seed' is set by the stage itself; use the pipeline's top-level `seed`"),
    ("stages.dpo.training.extra_args.output_dir=/tmp/x",
     "stages.dpo.training.extra_args: 'output_dir' is set by the stage itself; use the stage directory decides it"),
    ("stages.sft.training.extra_args.per_device_train_batch_size=2",
     "'per_device_train_batch_size' is set by the stage itself; use training.per_device_batch_size"),
    ("stages.sft.training.extra_args.deepspeed=configs/deepspeed/zero2.json",
     "'deepspeed' is set by the stage itself; use training.deepspeed"),
    ("stages.dpo.training.extra_args.report_to=wandb", "'report_to' is set by the stage itself; use the wandb section"),
    ("stages.sft.training.extra_args.lr_schedular_type=cosine",
     "'lr_schedular_type' is not a field of transformers.TrainingArguments (did you mean 'lr_scheduler_type'?)"),
    ("stages.sft.training.extra_args.max_grad_norm=big", "'max_grad_norm': 'big' is not a float"),
])
def test_refused_unknown_and_mistyped_keys_are_named_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        build_plan("configs/demo.yaml", [f"runs_dir={tmp_path}", override])
    assert str(e.value).startswith(f"command-line override '{override}': ") and message in str(e.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_accepted_keys_reach_training_arguments_over_our_defaults(tmp_path):
    from marco_train.train.common import training_arguments

    plan = build_plan("configs/demo.yaml", ["stages.sft.training.extra_args.lr_scheduler_type=constant",
                                            "stages.sft.training.extra_args.adam_beta2=0.95"])
    sft = plan.stages["sft"]
    args = training_arguments(sft.cfg.training, tmp_path, 0)
    assert (args.lr_scheduler_type, args.adam_beta2, args.ddp_find_unused_parameters) == ("constant", 0.95, False)
    assert args.report_to == [] and args.seed == 0 and args.output_dir == str(tmp_path / "checkpoints")
    mixture = build_plan("configs/demo.yaml", ["stages.dpo.training.extra_args.ddp_find_unused_parameters=true"])
    assert training_arguments(mixture.stages["dpo"].cfg.training, tmp_path, 0).ddp_find_unused_parameters is True
    assert sft.fingerprint != build_plan("configs/demo.yaml").stages["sft"].fingerprint  # part of the config


@pytest.mark.slow
def test_a_constant_schedule_from_extra_args_keeps_the_learning_rate(tmp_path):
    """The demo's sft decays its learning rate linearly; extra_args.lr_scheduler_type=constant keeps it."""
    overrides = [f"runs_dir={tmp_path}", "stages.sft.nproc_per_node=1", "stages.sft.training.max_steps=3",
                 "stages.sft.training.learning_rate=1e-4", "stages.sft.log_every=1", "stages.mcts.nproc_per_node=1",
                 "stages.split.process_check=false", "stages.mcts.num_problems=4", "stages.mcts.max_iterations=8",
                 "stages.mcts.min_iterations=4", "wandb.mode=disabled"]
    rates = {}
    for schedule in ("linear", "constant"):
        extra = [f"stages.sft.training.extra_args.lr_scheduler_type={schedule}"]
        pipeline("configs/demo.yaml", *overrides, *extra, flags=["--until", "sft", "--quiet"])
        (out,) = [s.out_dir for s in build_plan("configs/demo.yaml", overrides + extra).stages.values()
                  if s.kind == "sft"]
        lines = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
        rates[schedule] = [x["learning_rate"] for x in lines if "learning_rate" in x]
    assert rates["constant"] == [1e-4] * 3
    assert rates["linear"] == pytest.approx([1e-4, 1e-4 * 2 / 3, 1e-4 / 3])
