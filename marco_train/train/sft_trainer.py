"""The sft stage's pieces: tokenising the SFT set to the prompt contract, the packing decision, TRL's SFTTrainer,
and `fine_tune`, the whole training run of the sft stage and the cot stage (train, save, card, summary).

input_ids = the prompt (prompts.row_messages: the task's messages for the row's question, or a user row's own
prompt messages, through the chat template) + prompts.response_ids (response + end-of-turn), completion_mask 0 on
the prompt and 1 on the response; TRL turns that into labels (-100 on the prompt). Over-long rows are refused, not
truncated. `StageSFTTrainer` is TRL's SFTTrainer without its draft model card in checkpoints/ (the stage writes
model/README.md; train/model_card.py).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from omegaconf import OmegaConf
from trl import SFTConfig, SFTTrainer

from ..config import ConfigError
from ..data.user_data import system_prompts
from ..io import DataError
from ..models import load_model, load_tokenizer, model_dir, resolve_attention
from ..prompts import chat_prompt_ids, response_ids, row_messages
from .common import (
    TrackerCallback,
    checkpoint_step,
    finish_checkpoints,
    last_checkpoint,
    our_console,
    peft_config,
    run_train_loss,
    save_final,
    training_arguments,
)
from .model_card import model_card
from .prefix_sharing import decide_packing, dense_mask


def tokenize_sft(rows, tokenizer, task, max_length: int, where: str = "sft") -> Dataset:
    """A Dataset of input_ids (prompt + response + end-of-turn) and completion_mask (1 on the response)."""
    input_ids, masks = [], []
    for i, row in enumerate(rows):
        prompt = chat_prompt_ids(tokenizer, row_messages(task, row))
        response = response_ids(tokenizer, row["response"])
        if len(prompt) + len(response) > max_length:
            raise DataError(f"{where}: row {i} (id {row['id']}): {len(prompt) + len(response)} tokens > "
                            f"training.max_length={max_length}; raise training.max_length or set the split stage's "
                            f"max_length to drop longer paths")
        input_ids.append(prompt + response)
        masks.append([0] * len(prompt) + [1] * len(response))
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": masks})


def check_packing(cfg, model_config):
    """(pack?, why) for the stage's `packing` key (null: where exact, the support matrix in prefix_sharing.py)."""
    try:
        pack, why = decide_packing(model_config, cfg.packing, cfg.model.trust_remote_code)
    except ValueError as e:
        raise ConfigError(f"{e}; packed samples must not attend to each other") from None
    if pack and dense_mask(model_config):
        why += "; one packed row per micro-batch (a dense mask over TRL's flattened batch would grow with it)"
    return pack, why


class StageSFTTrainer(SFTTrainer):
    def create_model_card(self, *args, **kwargs):
        """Nothing: TRL would write checkpoints/README.md ("a fine-tuned version of [None]" for a local model)."""


def build_trainer(cfg, model_path, train_dataset, tokenizer, out_dir: Path, seed: int, log_every: int = 10,
                  callbacks=()) -> SFTTrainer:
    """The SFTTrainer for an sft stage config (also used by tests and the ZeRO-3 check).

    Packing is decided from the model's config before the arguments exist (ZeRO-3 partitions the weights while
    they load, under the arguments' DeepSpeed config). On dense-mask attention (sdpa, eager) a packed micro-batch
    is one row: TRL's padding-free collator flattens a micro-batch into one sequence, and a dense mask over it
    would cost attention quadratic in per_device_batch_size x max_length; gradient accumulation keeps the global
    batch (transformers normalises the loss over the tokens of the whole accumulated batch, so the step is the same).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=cfg.model.trust_remote_code)
    config._attn_implementation = resolve_attention(cfg.model.attn_implementation)
    pack, why = check_packing(cfg, config)
    training = cfg.training
    if pack and dense_mask(config):
        training = OmegaConf.merge(training, {"per_device_batch_size": 1})
    args = training_arguments(training, out_dir, seed, log_every, args_class=SFTConfig,
                              max_length=cfg.training.max_length, packing=pack, packing_strategy="bfd",
                              completion_only_loss=True)
    model = load_model(model_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    if pack and model.config._attn_implementation != config._attn_implementation:
        raise ConfigError(f"packing was decided for attention '{config._attn_implementation}' but the model loaded "
                          f"with '{model.config._attn_implementation}'; set model.attn_implementation explicitly")
    trainer = our_console(StageSFTTrainer(model=model, args=args, train_dataset=train_dataset,
                                          processing_class=tokenizer,
                                          peft_config=peft_config(cfg.lora) if cfg.lora.enabled else None,
                                          callbacks=list(callbacks)))
    trainer.packing_why = f"packing {'on' if pack else 'off'}: {why}"
    return trainer


def fine_tune(ctx, kind: str, rows, task, model_path: str, source: str, described: str) -> dict:
    """Train a stage's model on SFT rows ({id, question or prompt, response}) with the stage config ctx.cfg (the
    sft stage's keys: model, training, packing, lora), resuming from its last checkpoint; save the final model with
    its model card; return the stage summary. The sft stage's run, and the cot stage's on its written traces."""
    cfg = ctx.cfg
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    dataset = tokenize_sft(rows, tokenizer, task, cfg.training.max_length, source)
    trainer = build_trainer(cfg, model_path, dataset, tokenizer, ctx.out_dir, ctx.root.seed, cfg.log_every,
                            callbacks=[TrackerCallback(ctx, cfg.training.save_total_limit)])
    ctx.log(trainer.packing_why)
    resume = last_checkpoint(ctx.out_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
        ctx.tracker.truncate_after(checkpoint_step(resume))
    result = trainer.train(resume_from_checkpoint=resume)
    merge = cfg.lora.enabled and cfg.lora.merge
    card = model_card(kind=kind, name=f"{ctx.root.experiment}/{ctx.name}", start=model_path, data=described,
                      prompt_messages=row_messages(task, rows[0]), system_prompts=system_prompts(rows, task),
                      model_path=str(model_dir(ctx.out_dir)), steps=trainer.state.global_step, samples=len(rows))
    final = save_final(trainer, tokenizer, ctx.out_dir, merge_onto=model_path if merge else None, model_cfg=cfg.model,
                       card=card)
    freed = finish_checkpoints(ctx.out_dir, cfg.training.keep_optimizer_state)
    loss = run_train_loss(trainer, result, resume)
    ctx.log(f"saved {final} after {trainer.state.global_step} steps (train loss {loss:.4f})"
            + (f"; {freed / 2**20:.1f} MiB of optimizer state removed from checkpoints/" if freed else ""))
    return {"samples": len(rows), "packing": trainer.packing_why, "steps": trainer.state.global_step,
            "train_loss": loss, "resumed_from": Path(resume).name if resume else None, "model": str(final)}
