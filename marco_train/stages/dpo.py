"""Stage `dpo`: fine-grained DPO on the split stage's pairs — cDPO + α·SFT with the shared prefix masked.

Inputs: `data` (a split stage: <dir>/pairs) and `model` (the starting checkpoint, usually the sft stage's).
Output: <stage dir>/model (save_pretrained, model + tokenizer), checkpoints/ (HF Trainer, for resume),
metrics.jsonl (TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected, plus loss/dpo and loss/sft; W&B through the tracker).

Reused: transformers' Trainer (optimizer, schedule, accumulation, DDP, DeepSpeed ZeRO-2/3, checkpoints and
resume), datasets, peft. Ours: the loss (losses.py), the log-prob computation (logprobs.py; prefix sharing in
prefix_sharing.py) and the pair handling (dpo_data.py) — TRL's DPOTrainer has no cDPO for the sigmoid loss, masks a
prefix only by moving it into the prompt, and cannot share the prefix computation (DESIGN section 6).

Reference: `reference.mode=cached` (default) computes the reference log-probs once, before the policy is loaded,
and stores them under <experiment dir>/_cache/reference_logps/<key>.safetensors, key = content hash of the
reference weights + the tokenized pairs (so ablation variants with other β/ε/α share it); `model` keeps a frozen
copy and runs it every step (under ZeRO-3 it is sharded like the policy, via TRL's prepare_deepspeed). The
reference is the starting checkpoint unless reference.name_or_path says otherwise; with LoRA it is the base
model with the adapters off.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from ..config import ConfigError, ModelConfig, StageConfig, TrainingConfig, path_field

KIND = "dpo"
CODE_VERSION = 1
INPUTS = ("data", "model")
RESUMABLE = True
# Same math either way (float rounding aside): how to compute, not what.
EXTRA_RUNTIME_KEYS = ("prefix_sharing", "logprob_chunk_size", "reference_cache_dir")
CACHE_VERSION = 1
METRICS = ("loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected")


@dataclass
class ReferenceConfig:
    mode: str = "cached"  # cached (precomputed once, on disk) | model (a frozen copy runs every step)
    # empty = the starting checkpoint (with LoRA: the base with adapters off); a local dir's content is fingerprinted
    name_or_path: str = path_field("")


@dataclass
class LoraConfig:  # the sft stage's keys; the final save is always merged full weights (what eval loads)
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class Config(StageConfig):
    kind: str = KIND
    task: str = ""  # the prompt contract's task; empty = the one recorded by the split stage (its summary.json)
    beta: float = 0.1  # documented choice (TRL / DPO default); the paper gives none
    epsilon: float = 0.1  # cDPO label-noise rate; 0 = plain DPO
    alpha: float = 1.0  # weight of the SFT term (the paper's default)
    mask_prefix: bool = True  # exclude the shared-prefix tokens from policy and reference log-probs
    mask_sft_prefix: bool = True  # ... and from the SFT term
    logp_reduction: str = "sum"  # sum | mean (over the scored tokens of each response)
    sft_normalisation: str = "mean"  # mean (per-token NLL of each chosen response) | sum
    truncation: str = "cut_prefix"  # over-long pairs: cut_prefix (cut shared reasoning) | drop
    prefix_sharing: Optional[bool] = None  # null: where exact (support matrix in prefix_sharing.py); true; false
    logprob_chunk_size: int = 1024  # scored positions per LM-head chunk
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    reference_cache_dir: str = ""  # empty = <experiment dir>/_cache/reference_logps
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input's model
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def loss_config(cfg):
    from ..train.losses import LossConfig

    return LossConfig(beta=cfg.beta, epsilon=cfg.epsilon, alpha=cfg.alpha, mask_prefix=cfg.mask_prefix,
                      mask_sft_prefix=cfg.mask_sft_prefix, logp_reduction=cfg.logp_reduction,
                      sft_normalisation=cfg.sft_normalisation)


def make_trainer(**kwargs):
    """Our DPO Trainer (the transformers import stays inside: this module's top level is imported by the DAG)."""
    import torch
    import torch.distributed as tdist
    from transformers import Trainer

    from ..train.logprobs import pair_logps, sides
    from ..train.losses import fine_grained_dpo_loss

    class FineGrainedDPOTrainer(Trainer):
        loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean; Trainer divides by accumulation

        def __init__(self, *args, loss_config, reference_model=None, chunk_size=1024, **kw):
            super().__init__(*args, **kw)
            self.loss_config, self.chunk_size = loss_config, chunk_size
            self.reference_model = reference_model
            if reference_model is not None:
                if self.is_deepspeed_enabled:
                    from trl.models.utils import prepare_deepspeed  # sharded like the policy under ZeRO-3

                    self.reference_model = prepare_deepspeed(reference_model, self.accelerator)
                else:
                    self.reference_model = reference_model.to(self.args.device).eval()
            self._sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64, device=self.args.device)

        def reference_logps(self, inputs):
            if "ref_logps" in inputs:
                return sides(inputs["ref_logps"], inputs)
            with torch.no_grad():
                if self.reference_model is not None:
                    return pair_logps(self.reference_model, inputs, self.chunk_size)
                with self.accelerator.unwrap_model(self.model).disable_adapter():  # LoRA: the base model
                    return pair_logps(self.model, inputs, self.chunk_size)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            chosen, rejected = pair_logps(model, inputs, self.chunk_size)
            ref_chosen, ref_rejected = self.reference_logps(inputs)
            out = fine_grained_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.loss_config)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"non-finite DPO loss at step {self.state.global_step} on pairs "
                                         f"{inputs['pair_index'].tolist()} (dataset rows of the kept pairs); lower "
                                         f"training.learning_rate or check those pairs")
            margins = out.chosen_rewards - out.rejected_rewards
            values = [out.dpo.detach(), out.sft.detach(), out.chosen_rewards, out.rejected_rewards,
                      (margins > 0).to(margins.dtype), margins, out.policy_chosen, out.policy_rejected]
            self._sums += torch.stack([v.double().sum() for v in values] + [self._sums.new_tensor(len(out.dpo))])
            return (out.loss, out) if return_outputs else out.loss

        def log(self, logs, start_time=None):
            if "loss" in logs and self._sums[-1] > 0:  # a training log (not the end-of-training summary)
                sums = self._sums.clone()
                if tdist.is_available() and tdist.is_initialized():
                    tdist.all_reduce(sums)
                logs.update({name: (sums[i] / sums[-1]).item() for i, name in enumerate(METRICS)})
                self._sums.zero_()
            super().log(logs, start_time)

    return FineGrainedDPOTrainer(**kwargs)


# ----------------------------------------------------------------------------------------------- reference cache


def reference_cache_path(ctx, ref_path: str, examples) -> Path:
    from ..io import hash_json, hash_path
    from ..models import resolve_attention, resolve_dtype

    cfg = ctx.cfg
    model_id = hash_path(ref_path) if Path(ref_path).exists() else ref_path
    tokens = hash_json([[e["prompt_ids"], e["prefix_ids"], e["chosen_ids"], e["rejected_ids"]] for e in examples])
    key = hash_json({"model": model_id, "dtype": str(resolve_dtype(cfg.model.dtype)), "version": CACHE_VERSION,
                     "attention": resolve_attention(cfg.model.attn_implementation), "pairs": tokens})[:16]
    root = Path(cfg.reference_cache_dir) if cfg.reference_cache_dir else ctx.out_dir.parent / "_cache" / "reference_logps"
    return root / f"{key}.safetensors"


def sharing(ctx, config):
    from ..train.prefix_sharing import decide

    try:
        return decide(config, ctx.cfg.prefix_sharing)
    except ValueError as e:
        raise ConfigError(f"stages.{ctx.name}.{e}") from None


def cached_reference(ctx, ref_path: str, examples) -> dict:
    """{pair_index: [4 segment sums]} from the cache, or computed (pairs sharded over ranks) and stored."""
    import torch
    from safetensors.torch import load_file, save_file

    from .. import dist
    from ..models import load_model
    from ..train.dpo_data import PairCollator
    from ..train.logprobs import segment_sums_table
    from ..train.prefix_sharing import mask_dtype_for

    cfg = ctx.cfg
    path = dist.broadcast_object(reference_cache_path(ctx, ref_path, examples) if dist.is_main() else None)
    if dist.broadcast_object(path.exists()):  # rank 0 decides: every rank computes, or none does
        ctx.log(f"reference log-probs from cache {path}")
        values = load_file(str(path))["logps"]
        if values.shape[0] != len(examples):
            raise RuntimeError(f"{path}: {values.shape[0]} rows for {len(examples)} pairs; delete it and rerun")
        return {i: row for i, row in enumerate(values.tolist())}
    model = load_model(ref_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code,
                       device=dist.device()).eval()
    share, why = sharing(ctx, model.config)
    ctx.log(f"precomputing reference log-probs for {len(examples)} pairs ({'shared' if share else 'unshared'}"
            f" prefix: {why}) -> {path}")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    collate = PairCollator(pad, share, score_prefix=True, mask_dtype=mask_dtype_for(model.config))
    mine, size = examples[dist.rank()::dist.world_size()], cfg.training.per_device_batch_size
    batches = ({k: v.to(dist.device()) for k, v in collate(mine[i:i + size]).items()}
               for i in range(0, len(mine), size))
    table = {}
    for part in dist.all_gather_object(segment_sums_table(model, batches, cfg.logprob_chunk_size)):
        table.update(part)
    del model
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"logps": torch.tensor([table[i] for i in range(len(examples))], dtype=torch.float32)},
                  str(tmp), metadata={"reference": str(ref_path), "pairs": str(len(examples))})
        tmp.replace(path)
    dist.barrier()
    return table


# ----------------------------------------------------------------------------------------------- the stage


def apply_lora(model, lora):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = list(lora.target_modules)
    return get_peft_model(model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                target_modules="all-linear" if targets == ["all-linear"] else targets,
                                                task_type="CAUSAL_LM"))


def save_final(trainer, tokenizer, merged_lora: bool, out_dir: Path) -> Path:
    """<dir>/model (model + tokenizer), written to a temporary directory that rank 0 renames: never half a model."""
    import shutil

    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .. import dist
    from ..models import model_dir

    final, staged = model_dir(out_dir), Path(out_dir) / ".model.tmp"
    if dist.is_main() and staged.exists():
        shutil.rmtree(staged)
    dist.barrier()
    if merged_lora:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if dist.is_main():
            merged.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
    else:
        trainer.save_model(str(staged))  # every rank: ZeRO-3 gathers the shards; rank 0 writes model + tokenizer
    unset_hf_deepspeed_config()  # later from_pretrained calls in this process must not partition under ZeRO-3
    if dist.is_main():
        (staged / "training_args.bin").unlink(missing_ok=True)  # a pickle; the stage's config.yaml says it all
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    dist.barrier()
    return final


def check_config(cfg, prefix: str, where=lambda key: key) -> None:
    """Cross-key rules, at plan time (the DAG runner calls this); errors name the key and where it was set."""
    choices = {"reference.mode": ("cached", "model"), "truncation": ("cut_prefix", "drop")}
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{where(f'{prefix}.{key}')}: {prefix}.{key}='{value}': use {' or '.join(allowed)}")
    try:
        loss_config(cfg)
    except ValueError as e:
        key = str(e).split("=", 1)[0]
        raise ConfigError(f"{where(f'{prefix}.{key}')}: {prefix}.{e}") from None
    if cfg.training.deepspeed and not Path(cfg.training.deepspeed).exists():
        raise ConfigError(f"{where(f'{prefix}.training.deepspeed')}: {prefix}.training.deepspeed: file "
                          f"'{cfg.training.deepspeed}' not found (see configs/deepspeed/)")
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


def run(ctx) -> dict:
    import json
    import time

    from datasets import Dataset

    from ..data.schema import load_pairs
    from ..models import load_model, load_tokenizer, model_dir
    from ..tasks import get_task
    from ..train.common import checkpoint_step, last_checkpoint, tracker_callback, training_arguments
    from ..train.dpo_data import PairCollator, tokenize_pairs
    from ..train.prefix_sharing import mask_dtype_for

    cfg, started = ctx.cfg, time.time()
    losses = loss_config(cfg)  # validated at plan time by check_config
    start = cfg.model.name_or_path or str(model_dir(ctx.inputs["model"]))
    ref_path = cfg.reference.name_or_path or start
    tokenizer = load_tokenizer(start, cfg.model.trust_remote_code)
    data_dir = Path(ctx.inputs["data"])
    pairs_path, summary = data_dir / "pairs", data_dir / "summary.json"
    task = cfg.task or (json.loads(summary.read_text()).get("task") if summary.exists() else None)
    if not task:
        raise ConfigError(f"stages.{ctx.name}.task: not set and {summary} records none; set the task (e.g. toy)")
    examples, stats = tokenize_pairs(load_pairs(pairs_path), tokenizer, get_task(task), cfg.training.max_length,
                                     cfg.truncation, source=str(pairs_path))
    ctx.log(f"{stats.kept}/{stats.total} pairs ({stats.truncated} with cut shared prefix; dropped: "
            f"{stats.dropped_no_divergence} without divergence, {stats.dropped_too_long} too long)")
    if cfg.reference.mode == "cached":
        table = cached_reference(ctx, ref_path, examples)
        for e in examples:
            e["ref_logps"] = table[e["pair_index"]]

    args = training_arguments(cfg.training, ctx.out_dir, ctx.root.seed, cfg.log_every)
    policy = load_model(start, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    share, why = sharing(ctx, policy.config)
    ctx.log(f"prefix sharing {'on' if share else 'off'}: {why}")
    reference = None
    if cfg.reference.mode == "model" and (cfg.reference.name_or_path or not cfg.lora.enabled):
        reference = load_model(ref_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
        reference.requires_grad_(False)
    if cfg.lora.enabled:
        from transformers import set_seed

        set_seed(ctx.root.seed)  # the adapters' random init must not depend on what was loaded before
        policy = apply_lora(policy, cfg.lora)
    collator = PairCollator(tokenizer.pad_token_id, share, losses.needs_prefix_logps, mask_dtype_for(policy.config))
    trainer = make_trainer(model=policy, args=args, train_dataset=Dataset.from_list(examples), data_collator=collator,
                           processing_class=tokenizer, callbacks=[tracker_callback(ctx)], loss_config=losses,
                           reference_model=reference, chunk_size=cfg.logprob_chunk_size)
    resume = last_checkpoint(ctx.out_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
        ctx.tracker.truncate_after(checkpoint_step(resume))
    result = trainer.train(resume_from_checkpoint=resume)

    out = save_final(trainer, tokenizer, cfg.lora.enabled, ctx.out_dir)
    tokens = sum(2 * (len(e["prompt_ids"]) + len(e["prefix_ids"])) + len(e["chosen_ids"]) + len(e["rejected_ids"])
                 for e in examples)
    runtime = result.metrics.get("train_runtime", 0.0)
    epochs = result.metrics.get("epoch", 1.0)
    ctx.log(f"trained {result.global_step} steps in {runtime:.1f} s; model -> {out}")
    return {"pairs": asdict(stats), "steps": result.global_step, "train_loss": result.training_loss,
            "train_runtime": runtime, "tokens_per_second": round(tokens * epochs / runtime, 1) if runtime else None,
            "prefix_sharing": {"on": share, "why": why}, "reference": cfg.reference.mode,
            "seconds": round(time.time() - started, 1)}
