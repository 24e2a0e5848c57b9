"""Stage `sft`: supervised fine-tuning on the split stage's SFT set (question -> long correct path).

Inputs: `data` (a split stage: <dir>/sft, <dir>/summary.json) — or `dataset.name_or_path`, a user's own file or
hub dataset in TRL's or LLaMA-Factory's formats (data/user_data.py) — and `model` (the starting checkpoint), unless
model.name_or_path names it. Output: <stage dir>/model (model + tokenizer + README.md model card), checkpoints/
(for resume; the newest training.save_total_limit, stripped of optimizer state when the stage finishes),
metrics.jsonl.

The machinery is TRL's SFTTrainer (on the HF Trainer: accelerate, DeepSpeed ZeRO-2/3, checkpoints, resume).
We tokenise ourselves so that training sees exactly the prompt contract's sequences: input_ids =
prompts.prompt_ids + prompts.response_ids (response + end-of-turn) and completion_mask 0 on the prompt, 1 on
the response; TRL turns that into labels (-100 on the prompt) and the loss covers the response tokens only.
Sequences longer than training.max_length are refused, not truncated (truncation would cut the answer).

Packing (`packing: null`, the default: on where exact; true; false) uses TRL's best-fit-decreasing packing
without padding: each packed sample keeps its own position ids, and transformers builds a block-diagonal
attention mask from them (flash-attention's varlen kernels do the same), so packed samples cannot attend to
each other and every sample's logits are those it has alone. It is on by default where that holds (the support
matrix in train/prefix_sharing.py: the verified model types with the attention implementations of transformers'
own models; true also packs other transformers models), never for trust_remote_code models (their attention may
ignore the position ids; refused with the reason). With packing, training.global_batch_size and
per_device_batch_size count packed rows of up to max_length tokens, as in TRL.

LoRA (peft) trains adapters; the final directory holds the adapter, or merged full weights with
`lora.merge: true` (the adapter then stays in <dir>/adapter). Under ZeRO-3 the full weights are gathered for
the final save (configs/deepspeed/zero3.json sets stage3_gather_16bit_weights_on_model_save). A rerun resumes
from the last complete checkpoint and truncates metrics.jsonl after its step. The pieces: train/sft_trainer.py
(tokenising, packing guard, trainer) and train/common.py (arguments, checkpoints, LoRA, the final save).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config import ConfigError, LoraConfig, ModelConfig, StageConfig, TrainingConfig, at_least, checked
from ..data.user_data import DatasetConfig, check_dataset_config
from ..models import model_dir
from ..tasks import check_task_or_recorded, get_task
from . import check_deepspeed

KIND = "sft"
INPUTS = {"data": "dataset.name_or_path", "model": "model.name_or_path"}
RESUMABLE = True
READS = {"data": ("sft", "summary.json"), "model": ("model",)}  # what it reads in each input's directory


@dataclass
class SftLoraConfig(LoraConfig):
    merge: bool = False  # save merged full weights to <dir>/model instead of the adapter


@dataclass
class Config(StageConfig):
    kind: str = KIND
    # The prompt contract; empty = the task recorded by the split stage (its summary.json). With `dataset`: the
    # system prompt and user message for plain-text prompts (message prompts are used as given).
    task: str = checked("", check_task_or_recorded)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # a user's own data instead of inputs.data
    max_samples: int = at_least(0, default=0, hint="0 = the whole SFT set")
    packing: Optional[bool] = None  # null: on where exact (see the docstring); true; false
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input's model dir
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: SftLoraConfig = field(default_factory=SftLoraConfig)


def check_config(cfg, prefix: str, where=lambda key: key) -> None:
    """Called by the pipeline at plan time (before any work)."""
    check_dataset_config(cfg.dataset, "sft", prefix, where, cfg.inputs)
    check_training(cfg, prefix, where)


def check_training(cfg, prefix: str, where) -> None:
    """The plan-time checks of the training keys (packing, lora, training.deepspeed): the sft and cot stages'."""
    if cfg.packing and cfg.model.trust_remote_code:
        raise ConfigError(f"{where(prefix + '.packing')}: {prefix}.packing: true with model.trust_remote_code: true "
                          f"is refused: a remote-code model's attention may ignore the per-sample position ids, and "
                          f"packed samples would then attend to each other; set packing: false")
    if cfg.lora.merge and not cfg.lora.enabled:
        raise ConfigError(f"{where(prefix + '.lora.merge')}: {prefix}.lora.merge: true needs lora.enabled: true")
    check_deepspeed(cfg, prefix, where)


def run(ctx) -> dict:
    from ..data.user_data import stage_rows
    from ..train.sft_trainer import fine_tune

    cfg = ctx.cfg
    rows, task_name, source, described = stage_rows(cfg, ctx.inputs.get("data"), "sft", f"stages.{ctx.name}")
    task = get_task(task_name) if task_name else None
    model_path = cfg.model.name_or_path or str(model_dir(ctx.inputs["model"]))
    rows = rows[:cfg.max_samples] if cfg.max_samples else rows
    if len(rows) == 0:
        raise ConfigError(f"stages.{ctx.name}: the SFT set {source} is empty; see the split stage's summary.json "
                          f"for why queries were dropped")
    return fine_tune(ctx, KIND, rows, task, model_path, source, described)
