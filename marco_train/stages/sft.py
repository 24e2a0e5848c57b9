"""Stage `sft`: supervised fine-tuning on the split stage's SFT set (question -> long correct path).

Inputs: `data` (a split stage: <dir>/sft, <dir>/summary.json) and `model` (the starting checkpoint), unless
model.name_or_path names it. Output: <stage dir>/model (model + tokenizer), checkpoints/ (for resume),
metrics.jsonl.

The machinery is TRL's SFTTrainer (on the HF Trainer: accelerate, DeepSpeed ZeRO-2/3, checkpoints, resume).
We tokenise ourselves so that training sees exactly the prompt contract's sequences: input_ids =
prompts.prompt_ids + prompts.response_ids (response + end-of-turn) and completion_mask 0 on the prompt, 1 on
the response; TRL turns that into labels (-100 on the prompt) and the loss covers the response tokens only.
Sequences longer than training.max_length are refused, not truncated (truncation would cut the answer).

Packing (`packing: true`) uses TRL's best-fit-decreasing packing without padding: each packed sample keeps
its own position ids, and transformers builds a block-diagonal attention mask from them (flash-attention's
varlen kernels do the same), so packed samples cannot attend to each other. We only allow it where that
holds: the attention implementations of transformers' own models, not trust_remote_code models (their
attention may ignore the position ids; refused with the reason).

LoRA (peft) trains adapters; the final directory holds the adapter, or merged full weights with
`lora.merge: true` (the adapter then stays in <dir>/adapter). Under ZeRO-3 the full weights are gathered for
the final save (configs/deepspeed/zero3.json sets stage3_gather_16bit_weights_on_model_save). A rerun resumes
from the last complete checkpoint and truncates metrics.jsonl after its step. The pieces: train/sft_trainer.py
(tokenising, packing guard, trainer) and train/common.py (arguments, checkpoints, LoRA, the final save).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, LoraConfig, ModelConfig, StageConfig, TrainingConfig, at_least, checked
from ..data.schema import load_sft
from ..models import load_tokenizer, model_dir
from ..tasks import check_task_or_recorded, get_task

KIND = "sft"
CODE_VERSION = 1
INPUTS = {"data": None, "model": "model.name_or_path"}
RESUMABLE = True


@dataclass
class SftLoraConfig(LoraConfig):
    merge: bool = False  # save merged full weights to <dir>/model instead of the adapter


@dataclass
class Config(StageConfig):
    kind: str = KIND
    task: str = checked("", check_task_or_recorded)  # empty = the task recorded by the split stage (its summary.json)
    max_samples: int = at_least(0, default=0, hint="0 = the whole SFT set")
    packing: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input's model dir
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: SftLoraConfig = field(default_factory=SftLoraConfig)


def check_config(cfg, prefix: str, where=lambda key: key) -> None:
    """Called by the pipeline at plan time (before any work)."""
    if cfg.packing and cfg.model.trust_remote_code:
        raise ConfigError(f"{where(prefix + '.packing')}: {prefix}.packing: true with model.trust_remote_code: true "
                          f"is refused: a remote-code model's attention may ignore the per-sample position ids, and "
                          f"packed samples would then attend to each other; set packing: false")
    if cfg.lora.merge and not cfg.lora.enabled:
        raise ConfigError(f"{where(prefix + '.lora.merge')}: {prefix}.lora.merge: true needs lora.enabled: true")
    if cfg.training.deepspeed and not Path(cfg.training.deepspeed).exists():
        raise ConfigError(f"{where(prefix + '.training.deepspeed')}: {prefix}.training.deepspeed: file "
                          f"'{cfg.training.deepspeed}' not found (see configs/deepspeed/)")


def run(ctx) -> dict:
    from ..train.common import TrackerCallback, checkpoint_step, last_checkpoint, save_final
    from ..train.sft_trainer import build_trainer, tokenize_sft

    cfg = ctx.cfg
    data_dir = Path(ctx.inputs["data"])
    task_name = cfg.task or json.loads((data_dir / "summary.json").read_text())["task"]
    model_path = cfg.model.name_or_path or str(model_dir(ctx.inputs["model"]))
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    rows = load_sft(data_dir / "sft")
    if cfg.max_samples:
        rows = rows.select(range(min(cfg.max_samples, len(rows))))
    if len(rows) == 0:
        raise ConfigError(f"stages.{ctx.name}: the SFT set {data_dir / 'sft'} is empty; see "
                          f"{data_dir / 'summary.json'} for why queries were dropped")
    dataset = tokenize_sft(rows, tokenizer, get_task(task_name), cfg.training.max_length, str(data_dir / "sft"))
    trainer = build_trainer(cfg, model_path, dataset, tokenizer, ctx.out_dir, ctx.root.seed, cfg.log_every,
                            callbacks=[TrackerCallback(ctx)])
    resume = last_checkpoint(ctx.out_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
        ctx.tracker.truncate_after(checkpoint_step(resume))
    result = trainer.train(resume_from_checkpoint=resume)
    merge = cfg.lora.enabled and cfg.lora.merge
    final = save_final(trainer, tokenizer, ctx.out_dir, merge_onto=model_path if merge else None, model_cfg=cfg.model)
    ctx.log(f"saved {final} after {trainer.state.global_step} steps (train loss {result.training_loss:.4f})")
    return {"samples": len(rows), "steps": trainer.state.global_step, "train_loss": result.training_loss,
            "resumed_from": Path(resume).name if resume else None, "model": str(final)}
