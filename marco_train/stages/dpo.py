"""Stage `dpo`: fine-grained DPO on the split stage's pairs — cDPO + α·SFT with the shared prefix masked.

Inputs: `data` (a split stage: <dir>/pairs) — or `dataset.name_or_path`, a user's own preference pairs in TRL's or
LLaMA-Factory's formats, a file or hub dataset (data/user_data.py; the shared prefix is computed from the token ids)
— and `model` (the starting checkpoint, usually the sft stage's).
Output: <stage dir>/model (save_pretrained, model + tokenizer + README.md model card), checkpoints/ (HF Trainer, for
resume; the newest training.save_total_limit, stripped of optimizer state when the stage finishes),
metrics.jsonl (TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected, plus loss/dpo and loss/sft; W&B through the tracker).

Reused: transformers' Trainer (optimizer, schedule, accumulation, DDP, DeepSpeed ZeRO-2/3, checkpoints and
resume), datasets, peft. Ours: the loss (losses.py), the log-prob computation (logprobs.py; prefix sharing in
prefix_sharing.py) and the pair handling (dpo_data.py) — TRL's DPOTrainer has no cDPO for the sigmoid loss, masks a
prefix only by moving it into the prompt, and cannot share the prefix computation (losses.py).

Batching: a step is training.global_batch_size pairs of a seeded per-epoch order. Its pairs are packed several
to a row without padding (`packing`, on where exact) into micro-batches of at most `micro_batch_tokens` positions,
or padded per_device_batch_size pairs at a time; each pair's prompt + shared prefix is computed once
(`prefix_sharing`, on where exact). Every rank takes as many micro-batches, and the loss is the mean over the
step's pairs, so the update does not depend on the budget or the world size (train/dpo_batching.py; the layouts
in train/layouts.py, the support matrix in train/prefix_sharing.py and README.md's Performance section).

Reference: `reference.mode=cached` (default) computes the reference log-probs once, before the policy is loaded,
and stores them under <experiment dir>/_cache/reference_logps/<key>.safetensors, key = content hash of the
reference weights + the tokenized pairs + the code computing them (so ablation variants with other β/ε/α share
it, and a code edit recomputes it); `model` keeps a frozen
copy and runs it every step (under ZeRO-3 it is sharded like the policy, via TRL's prepare_deepspeed). The
reference is the starting checkpoint unless reference.name_or_path says otherwise; with LoRA it is the base
model with the adapters off. The pieces: train/dpo_trainer.py (the Trainer), train/reference_cache.py,
train/common.py (arguments, checkpoints, LoRA, the final save).

`beta_scale: mean_scored_tokens` (with `logp_reduction: mean` only) multiplies β by the pair set's mean number
of scored tokens per response (chosen and rejected, after masking), measured on the tokenized pairs: a mean
log-prob is a sum divided by about that many tokens, so Δ keeps the scale it has with summed log-probs and
β = 0.1. The β used is in the summary (`beta_effective`).
"""

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from ..config import (
    ConfigError,
    LoraConfig,
    ModelConfig,
    StageConfig,
    TrainingConfig,
    at_least,
    checked,
    hub_model_check,
    path_field,
)
from ..data.user_data import DatasetConfig, check_dataset_config
from ..models import load_model, load_tokenizer, model_dir
from ..tasks import check_task_or_recorded, get_task
from ..train.loss_config import LossConfig
from . import check_deepspeed

KIND = "dpo"
INPUTS = {"data": "dataset.name_or_path", "model": "model.name_or_path"}
RESUMABLE = True
READS = {"data": ("pairs",), "model": ("model",)}  # what it reads in each input's directory
# Same math either way (float rounding aside): how to compute, not what.
EXTRA_RUNTIME_KEYS = ("prefix_sharing", "packing", "micro_batch_tokens", "logprob_chunk_size", "reference_cache_dir")


@dataclass
class ReferenceConfig:
    mode: str = "cached"  # cached (precomputed once, on disk) | model (a frozen copy runs every step)
    # empty = the starting checkpoint (with LoRA: the base with adapters off); a local dir's content is fingerprinted
    name_or_path: str = path_field("", check=hub_model_check)


@dataclass
class Config(StageConfig):
    kind: str = KIND
    # The prompt contract's task; empty = the one recorded by the split stage (its summary.json). With `dataset`: the
    # system prompt and user message for plain-text prompts (message prompts are used as given).
    task: str = checked("", check_task_or_recorded)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # a user's own pairs instead of inputs.data
    beta: float = 0.1  # documented choice (TRL / DPO default); the paper gives none
    epsilon: float = 0.1  # cDPO label-noise rate; 0 = plain DPO
    alpha: float = 1.0  # weight of the SFT term (the paper's default)
    mask_prefix: bool = True  # exclude the shared-prefix tokens from policy and reference log-probs
    mask_sft_prefix: bool = True  # ... and from the SFT term
    logp_reduction: str = "sum"  # sum | mean (over the scored tokens of each response)
    beta_scale: str = "none"  # none | mean_scored_tokens (logp_reduction mean: β x mean scored tokens; docstring)
    sft_normalisation: str = "mean"  # mean (per-token NLL of each chosen response) | sum
    truncation: str = "cut_prefix"  # over-long pairs: cut_prefix (cut shared reasoning) | drop
    prefix_sharing: Optional[bool] = None  # null: where exact (support matrix in prefix_sharing.py); true; false
    packing: Optional[bool] = None  # several pairs per row, no padding; null: where exact (same matrix); true; false
    # packed: positions per micro-batch; 0 = training.max_length on sdpa/eager (dense masks), else
    # training.per_device_batch_size x max_length (train/prefix_sharing.py: default_micro_tokens)
    micro_batch_tokens: int = at_least(0, default=0, hint="0 = auto")
    logprob_chunk_size: int = at_least(1, default=1024)  # scored positions per LM-head chunk
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    reference_cache_dir: str = ""  # empty = <experiment dir>/_cache/reference_logps
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input's model
    lora: LoraConfig = field(default_factory=LoraConfig)  # saved merged: full weights
    training: TrainingConfig = field(default_factory=TrainingConfig)


def check_config(cfg, prefix: str, where=lambda key: key) -> None:
    """Cross-key rules, at plan time (the DAG runner calls this); errors name the key and where it was set."""
    check_dataset_config(cfg.dataset, "pairs", prefix, where, cfg.inputs)
    choices = {"reference.mode": ("cached", "model"), "truncation": ("cut_prefix", "drop"),
               "beta_scale": ("none", "mean_scored_tokens")}
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{where(f'{prefix}.{key}')}: {prefix}.{key}='{value}': use {' or '.join(allowed)}")
    if cfg.beta_scale != "none" and cfg.logp_reduction != "mean":
        raise ConfigError(f"{where(f'{prefix}.beta_scale')}: {prefix}.beta_scale={cfg.beta_scale} rescales β for "
                          f"mean log-probs; set logp_reduction: mean or beta_scale: none")
    try:
        loss_config(cfg)
    except ValueError as e:
        key = str(e).split("=", 1)[0]
        raise ConfigError(f"{where(f'{prefix}.{key}')}: {prefix}.{e}") from None
    check_deepspeed(cfg, prefix, where)
    if cfg.lora.enabled and cfg.training.deepspeed and "3" in Path(cfg.training.deepspeed).name:
        raise ConfigError(f"{where(f'{prefix}.lora.enabled')}: {prefix}.lora with ZeRO-3 ({cfg.training.deepspeed}) "
                          f"is not supported by the dpo stage; use ZeRO-2 or full fine-tuning")


def canonical_config(config: dict) -> dict:
    """The config with the keys the loss algebra makes irrelevant pinned, so equivalent ablation variants compare
    equal: with summed log-probs the shared prefix cancels in Δ (mask_prefix changes nothing); with α = 0 the
    SFT-term keys change nothing."""
    config = dict(config)
    if config.get("logp_reduction") == "sum":
        config["mask_prefix"] = True
    if config.get("alpha") == 0:
        config.update(mask_sft_prefix=True, sft_normalisation="mean")
    return config


def mean_scored_tokens(examples, mask_prefix: bool) -> float:
    """Mean over the responses of the pairs (chosen and rejected) of the tokens their log-prob is taken over."""
    if not examples:
        return 1.0
    prefix = 0 if mask_prefix else 1
    total = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) + 2 * prefix * len(e["prefix_ids"]) for e in examples)
    return total / (2 * len(examples))


def loss_config(cfg):
    """The loss keys as a LossConfig (which checks their values)."""
    return LossConfig(beta=cfg.beta, epsilon=cfg.epsilon, alpha=cfg.alpha, mask_prefix=cfg.mask_prefix,
                      mask_sft_prefix=cfg.mask_sft_prefix, logp_reduction=cfg.logp_reduction,
                      sft_normalisation=cfg.sft_normalisation)


def run(ctx) -> dict:
    from datasets import Dataset
    from transformers import set_seed

    from ..data.user_data import stage_rows, system_prompts
    from ..prompts import row_messages
    from ..train.common import (
        TrackerCallback,
        apply_lora,
        checkpoint_step,
        finish_checkpoints,
        last_checkpoint,
        our_console,
        run_train_loss,
        save_final,
        training_arguments,
    )
    from ..train.dpo_data import PairCollator, tokenize_pairs
    from ..train.dpo_trainer import FineGrainedDPOTrainer, layout_choice
    from ..train.model_card import model_card
    from ..train.prefix_sharing import default_micro_tokens
    from ..train.reference_cache import cached_reference

    cfg, started = ctx.cfg, time.time()
    losses = loss_config(cfg)  # validated at plan time by check_config
    start = cfg.model.name_or_path or str(model_dir(ctx.inputs["model"]))
    ref_path = cfg.reference.name_or_path or start
    tokenizer = load_tokenizer(start, cfg.model.trust_remote_code)
    rows, task_name, source, described = stage_rows(cfg, ctx.inputs.get("data"), "pairs", f"stages.{ctx.name}")
    task = get_task(task_name) if task_name else None
    examples, stats = tokenize_pairs(rows, tokenizer, task, cfg.training.max_length, cfg.truncation, source=source)
    ctx.log(f"{stats.kept}/{stats.total} pairs ({stats.truncated} with cut shared prefix; dropped: "
            f"{stats.dropped_no_divergence} without divergence, {stats.dropped_too_long} too long)")
    if cfg.beta_scale == "mean_scored_tokens":
        scale = mean_scored_tokens(examples, cfg.mask_prefix)
        losses = replace(losses, beta=cfg.beta * scale)
        ctx.log(f"beta {cfg.beta} x {scale:.2f} mean scored tokens per response = {losses.beta:.4f}")
    if cfg.reference.mode == "cached":
        table = cached_reference(ctx, ref_path, examples)
        for e in examples:
            e["ref_logps"] = table[e["pair_index"]]

    args = training_arguments(cfg.training, ctx.out_dir, ctx.root.seed, cfg.log_every, own_batching=True)
    policy = load_model(start, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    share, pack, why = layout_choice(ctx, policy.config)
    budget = cfg.micro_batch_tokens or default_micro_tokens(policy.config, cfg.training.per_device_batch_size,
                                                            cfg.training.max_length)
    ctx.log(why + (f"; micro-batches of <= {budget} positions" if pack else ""))
    reference = None
    if cfg.reference.mode == "model" and (cfg.reference.name_or_path or not cfg.lora.enabled):
        reference = load_model(ref_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
        reference.requires_grad_(False)
    if cfg.lora.enabled:
        set_seed(ctx.root.seed)  # the adapters' random init must not depend on what was loaded before
        policy = apply_lora(policy, cfg.lora)
    collator = PairCollator(tokenizer.pad_token_id, share, losses.needs_prefix_logps, packed=pack)
    trainer = FineGrainedDPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(examples),
                                    data_collator=collator, processing_class=tokenizer,
                                    callbacks=[TrackerCallback(ctx, cfg.training.save_total_limit)],
                                    loss_config=losses, reference_model=reference,
                                    chunk_size=cfg.logprob_chunk_size, global_batch_size=cfg.training.global_batch_size,
                                    micro_tokens=budget if pack else None,
                                    micro_pairs=None if pack else cfg.training.per_device_batch_size)
    our_console(trainer)
    resume = last_checkpoint(ctx.out_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
        ctx.tracker.truncate_after(checkpoint_step(resume))
    result = trainer.train(resume_from_checkpoint=resume)

    card = model_card(kind=KIND, name=f"{ctx.root.experiment}/{ctx.name}", start=start, data=described,
                      prompt_messages=row_messages(task, rows[0]), system_prompts=system_prompts(rows, task),
                      model_path=str(model_dir(ctx.out_dir)), steps=result.global_step, samples=stats.kept)
    out = save_final(trainer, tokenizer, ctx.out_dir, merge_onto=start if cfg.lora.enabled else None,
                     model_cfg=cfg.model, card=card)
    finish_checkpoints(ctx.out_dir, cfg.training.keep_optimizer_state)
    tokens = sum(2 * (len(e["prompt_ids"]) + len(e["prefix_ids"])) + len(e["chosen_ids"]) + len(e["rejected_ids"])
                 for e in examples)
    runtime = result.metrics.get("train_runtime", 0.0)
    epochs = result.metrics.get("epoch", 1.0)
    ctx.log(f"trained {result.global_step} steps in {runtime:.1f} s; model -> {out}")
    return {"pairs": asdict(stats), "steps": result.global_step, "train_loss": run_train_loss(trainer, result, resume),
            "resumed_from": Path(resume).name if resume else None,
            "train_runtime": runtime, "tokens_per_second": round(tokens * epochs / runtime, 1) if runtime else None,
            "prefix_sharing": {"on": share, "why": why}, "packing": {"on": pack, "micro_batch_tokens": budget},
            "reference": cfg.reference.mode, "beta_effective": losses.beta,
            "seconds": round(time.time() - started, 1)}
