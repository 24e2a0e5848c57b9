"""Stage `sft`: supervised fine-tuning on the split stage's SFT set (question -> long correct path).

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
`lora.merge: true`. Under ZeRO-3 the full weights are gathered for the final save
(configs/deepspeed/zero3.json sets stage3_gather_16bit_weights_on_model_save). A rerun resumes from the last
complete checkpoint (see train/common.py) and truncates metrics.jsonl after its step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from ..config import ConfigError, ModelConfig, StageConfig, TrainingConfig

KIND = "sft"
CODE_VERSION = 1
INPUTS = ("data",)  # plus `model`, unless model.name_or_path names the checkpoint
RESUMABLE = True
# Attention implementations that honour per-sample position ids in packed rows (transformers' own models).
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    merge: bool = False  # save merged full weights to <dir>/model instead of the adapter


@dataclass
class Config(StageConfig):
    kind: str = KIND
    task: str = ""  # empty = the task recorded by the split stage (its summary.json)
    max_samples: int = 0  # 0 = the whole SFT set
    packing: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input's model dir
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


def check_config(cfg, prefix: str, where=lambda key: key) -> None:
    """Called by the pipeline at plan time (before any work)."""
    if not cfg.model.name_or_path and "model" not in cfg.inputs:
        raise ConfigError(f"{where(prefix)}: {prefix}: set inputs.model (a stage that saves a model) or "
                          f"model.name_or_path (a hub name or directory)")
    if cfg.packing and cfg.model.trust_remote_code:
        raise ConfigError(f"{where(prefix + '.packing')}: {prefix}.packing: true with model.trust_remote_code: true "
                          f"is refused: a remote-code model's attention may ignore the per-sample position ids, and "
                          f"packed samples would then attend to each other; set packing: false")
    if cfg.lora.merge and not cfg.lora.enabled:
        raise ConfigError(f"{where(prefix + '.lora.merge')}: {prefix}.lora.merge: true needs lora.enabled: true")
    if cfg.training.deepspeed and not Path(cfg.training.deepspeed).exists():
        raise ConfigError(f"{where(prefix + '.training.deepspeed')}: {prefix}.training.deepspeed: file "
                          f"'{cfg.training.deepspeed}' not found (see configs/deepspeed/)")


def tokenize_sft(rows, tokenizer, task, max_length: int, where: str = "sft"):
    """A Dataset of input_ids (prompt + response + end-of-turn) and completion_mask (1 on the response)."""
    from datasets import Dataset

    from ..io import DataError
    from ..prompts import prompt_ids, response_ids

    input_ids, masks = [], []
    for i, row in enumerate(rows):
        prompt, response = prompt_ids(tokenizer, task, row["question"]), response_ids(tokenizer, row["response"])
        if len(prompt) + len(response) > max_length:
            raise DataError(f"{where}: row {i} (id {row['id']}): {len(prompt) + len(response)} tokens > "
                            f"training.max_length={max_length}; raise training.max_length or set the split stage's "
                            f"max_length to drop longer paths")
        input_ids.append(prompt + response)
        masks.append([0] * len(prompt) + [1] * len(response))
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": masks})


def check_packing(cfg, model) -> None:
    if not cfg.packing:
        return
    if cfg.model.trust_remote_code:
        raise ConfigError("packing: true with model.trust_remote_code: true is refused: a remote-code model's "
                          "attention may ignore the per-sample position ids, and packed samples would then attend to "
                          "each other; set packing: false")
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in PACKING_ATTENTION:
        raise ConfigError(f"packing: true with attention '{impl}' is refused: only {', '.join(PACKING_ATTENTION)} "
                          f"keep packed samples from attending to each other; set packing: false")


def peft_config(lora):
    from peft import LoraConfig as PeftLoraConfig

    targets = list(lora.target_modules)
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                          target_modules="all-linear" if targets == ["all-linear"] else targets)


def build_trainer(cfg, model_path, train_dataset, tokenizer, out_dir: Path, seed: int, log_every: int = 10,
                  callbacks=()):
    """The SFTTrainer for this stage's config (also used by tests and the ZeRO-3 check)."""
    from trl import SFTConfig, SFTTrainer

    from ..models import load_model
    from ..train.common import training_arguments

    args = training_arguments(cfg.training, out_dir, seed, log_every, args_class=SFTConfig,
                              max_length=cfg.training.max_length, packing=cfg.packing, packing_strategy="bfd",
                              completion_only_loss=True)
    model = load_model(model_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    check_packing(cfg, model)
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      peft_config=peft_config(cfg.lora) if cfg.lora.enabled else None, callbacks=list(callbacks))


def save_final(trainer, tokenizer, cfg, model_path, out_dir: Path) -> Path:
    """save_pretrained (+ tokenizer) into <dir>/model via a temporary directory renamed on rank 0."""
    import shutil

    from .. import dist
    from ..models import load_model, model_dir

    final = model_dir(out_dir)
    staged = Path(out_dir) / ".model.tmp"
    adapter = Path(out_dir) / "adapter"
    if dist.is_main() and staged.exists():
        shutil.rmtree(staged)
    dist.barrier()
    merge = cfg.lora.enabled and cfg.lora.merge
    trainer.save_model(str(adapter if merge else staged))  # every rank (ZeRO-3 gathers); rank 0 writes
    dist.barrier()
    # Training is over: later from_pretrained calls in this process (the LoRA merge, a next stage) must not
    # build their models inside ZeRO-3's partitioning context, which needs every rank.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if dist.is_main():
        if merge:
            from peft import PeftModel

            base = load_model(model_path, cfg.model.dtype, "eager", cfg.model.trust_remote_code)
            PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(staged))
        tokenizer.save_pretrained(str(staged))
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    dist.barrier()
    return final


def run(ctx) -> dict:
    import json

    from ..models import load_tokenizer, model_dir
    from ..tasks import get_task
    from ..data.schema import load_sft
    from ..train.common import checkpoint_step, last_checkpoint, tracker_callback

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
                            callbacks=[tracker_callback(ctx)])
    resume = last_checkpoint(ctx.out_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
        ctx.tracker.truncate_after(checkpoint_step(resume))
    result = trainer.train(resume_from_checkpoint=resume)
    final = save_final(trainer, tokenizer, cfg, model_path, ctx.out_dir)
    ctx.log(f"saved {final} after {trainer.state.global_step} steps (train loss {result.training_loss:.4f})")
    return {"samples": len(rows), "steps": trainer.state.global_step, "train_loss": result.training_loss,
            "resumed_from": Path(resume).name if resume else None, "model": str(final)}
