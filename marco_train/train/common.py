"""Glue between our training configs and the HF Trainer machinery (accelerate, DeepSpeed, peft) shared by sft and dpo.

- the *global* batch is fixed: gradient accumulation = global / (per-device batch x world size);
- precision and gradient checkpointing default by device (fp32 / off on CPU, bf16 / on on GPU);
- DeepSpeed needs a process group even for one process: under torchrun it joins torchrun's; run in-process
  (nproc_per_node: 1) it gets a one-rank group on a free local port, as the `deepspeed` launcher would make;
- the Trainer's own W&B integration is off (`report_to=[]`); `TrackerCallback` forwards its logs to our
  tracker (the one owner of the run). After each checkpoint it waits for every rank, then rank 0 writes
  `COMPLETE` into the checkpoint directory (a kill mid-save leaves a checkpoint without it, which
  `last_checkpoint` skips), then the `after_checkpoint` fault point fires (every checkpoint step is also a logging step,
  so `run_train_loss` can give the whole run's mean loss after a resume), then rank 0 deletes the checkpoints
  older than the newest `training.save_total_limit` complete ones (the HF Trainer's own rotation would delete
  them before the new one is marked complete, so a kill there could leave none to resume from);
- the LoRA setup (`peft_config`, `apply_lora`), the final save (`save_final`: weights, tokenizer, model card, no
  pickle) and `finish_checkpoints` (a finished stage's checkpoints keep weights, not optimizer state).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from .. import dist, logs
from ..config import ConfigError, LoraConfig, ModelConfig, gradient_accumulation
from ..extra_args import merged as merged_extra_args
from ..faults import fault_point
from ..models import load_model, model_dir, on_gpu, resolve_gradient_checkpointing

COMPLETE_MARKER = "COMPLETE"


def resolve_precision(name: str) -> str:
    if name == "auto":
        return "bf16" if on_gpu() and torch.cuda.is_bf16_supported() else "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision='{name}': use auto, fp32, bf16 or fp16")
    return name


def _init_deepspeed() -> None:
    import deepspeed  # optional (only with training.deepspeed) and slow to import

    if "RANK" not in os.environ:  # in-process, one rank: the env the deepspeed launcher would set
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if not on_gpu():
        _load_cpu_shm_op()
    # Under the Trainer on CPU, ZeRO needs the gloo group before the Trainer is built.
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo")


def _load_cpu_shm_op() -> None:
    """On CPU, DeepSpeed's comm backend JIT-compiles its shared-memory op when it starts, behind torch's FileBaton:
    the `lock` file a compile killed midway leaves behind makes every later start wait for ever. So each rank loads
    the op here first, holding an flock (the kernel frees it when its holder dies). DeepSpeed keeps the loaded op,
    so no rank of ours touches the baton outside the flock: a `lock` found while holding it is a dead compile's."""
    import fcntl

    from deepspeed.accelerator import get_accelerator
    from deepspeed.comm.torch import build_shm_op
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None:
        return
    build_dir = Path(_get_build_directory(builder.NAME, verbose=False))
    with open(build_dir.parent / f"{builder.NAME}.marco-train.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        baton = build_dir / "lock"
        if baton.exists():
            logs.get().warning("removing %s, left by a compile that was killed", baton)
            baton.unlink()
        build_shm_op()


def training_arguments(cfg, out_dir: Path, seed: int, log_every: int = 10, args_class=TrainingArguments,
                       own_batching: bool = False, **extra):
    """TrainingArguments (or `args_class`, e.g. trl.SFTConfig) from a TrainingConfig; checkpoints go to
    <stage dir>/checkpoints. `extra` are the stage's further keyword arguments of `args_class`; the user's
    `training.extra_args` (checked at plan time: marco_train/extra_args.py) come on top of our defaults.
    own_batching: the trainer forms each step's micro-batches itself (the dpo trainer): one dataloader item per
    step, no accumulation."""
    if cfg.deepspeed:
        if not Path(cfg.deepspeed).exists():
            raise ConfigError(f"deepspeed: file '{cfg.deepspeed}' not found (see configs/deepspeed/)")
        _init_deepspeed()
    precision = resolve_precision(cfg.precision)
    accumulation = 1 if own_batching else gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                                                dist.world_size())
    return args_class(
        output_dir=str(Path(out_dir) / "checkpoints"),
        per_device_train_batch_size=1 if own_batching else cfg.per_device_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=resolve_gradient_checkpointing(cfg.gradient_checkpointing),  # transformers 5 name
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        logging_steps=log_every,
        report_to=[],
        seed=seed,
        data_seed=seed,
        deepspeed=cfg.deepspeed,
        use_cpu=not on_gpu(),
        ddp_backend="gloo" if not on_gpu() and dist.world_size() > 1 else None,
        remove_unused_columns=False,
        disable_tqdm=True,  # TrackerCallback draws the progress (marco_train/logs.py)
        **merged_extra_args(cfg.extra_args),  # ddp_find_unused_parameters=False, dataloader_num_workers=0, the user's
        **extra,
    )


def _checkpoints(out_dir: Path) -> list:
    """<stage dir>/checkpoints/checkpoint-N directories, oldest first."""
    ckpt = Path(out_dir) / "checkpoints"
    found = [p for p in ckpt.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)] if ckpt.is_dir() else []
    return sorted(found, key=lambda p: checkpoint_step(p.name))


def last_checkpoint(out_dir: Path) -> Optional[str]:
    """The newest <stage dir>/checkpoints/checkpoint-N that every rank finished writing, or None."""
    done = [p for p in _checkpoints(out_dir) if (p / COMPLETE_MARKER).exists()]
    return str(done[-1]) if done else None


def checkpoint_step(path: str) -> int:
    return int(Path(path).name.split("-")[1])


def _remove_checkpoint(path: Path) -> None:
    (path / COMPLETE_MARKER).unlink(missing_ok=True)  # first: a kill mid-delete leaves no "complete" half
    shutil.rmtree(path, ignore_errors=True)


def rotate_checkpoints(out_dir: Path, keep: int) -> list:
    """Delete every checkpoint older than the newest `keep` complete ones (0 = keep all); returns the deleted."""
    complete = [p for p in _checkpoints(out_dir) if (p / COMPLETE_MARKER).exists()]
    if not keep or len(complete) <= keep:
        return []
    oldest_kept = checkpoint_step(complete[-keep].name)
    old = [p for p in _checkpoints(out_dir) if checkpoint_step(p.name) < oldest_kept]
    for path in old:
        _remove_checkpoint(path)
    return old


# What only resuming needs: HF Trainer's optimizer/scheduler/scaler/RNG files and args pickle, and DeepSpeed's
# optimizer partitions (global_stepN/*optim_states.pt), which under ZeRO-3 also hold the fp32 master weights: they
# go only where the checkpoint has gathered safetensors weights (configs/deepspeed/*.json gather them on save).
RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin")
DEEPSPEED_OPTIMIZER = "global_step*/*optim_states.pt"


def finish_checkpoints(out_dir: Path, keep_optimizer_state: bool = False) -> int:
    """Called once the final model is saved: unless `keep_optimizer_state`, strip each checkpoint to its weights
    and trainer_state.json (COMPLETE goes first: a stripped checkpoint is not resumable). Returns bytes freed."""
    freed = 0
    if keep_optimizer_state or not dist.is_main():
        return freed
    for path in _checkpoints(out_dir):
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
        weights = any(path.glob("*.safetensors"))
        for pattern in RESUME_ONLY + ((DEEPSPEED_OPTIMIZER,) if weights else ()):
            for f in path.glob(pattern):
                freed += f.stat().st_size
                f.unlink()
    return freed


class TrackerCallback(TrainerCallback):
    """Forwards the Trainer's logs to ctx.tracker (rank 0) and prints them as one of our lines, draws the step
    progress (a bar on a terminal: marco_train/logs.py), logs at every checkpoint step, stops on a non-finite loss,
    marks finished checkpoints COMPLETE, fires the after_checkpoint fault point, then keeps the newest
    `save_total_limit` complete checkpoints (0 = all). `our_console(trainer)` removes the Trainer's own progress
    and printer callbacks it replaces."""

    def __init__(self, ctx, save_total_limit: int = 0):
        self.ctx, self.save_total_limit, self.bar = ctx, save_total_limit, None

    def on_train_begin(self, args, state, control, **kwargs):
        from .. import logs

        if dist.is_main() and logs.progress_bar_wanted():
            self.bar = logs.progress(state.max_steps, f"{self.ctx.name}: steps", initial=state.global_step,
                                     unit="steps")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.ctx.tracker.log(logs, state.global_step)
            dist.log(f"{self.ctx.name}: {log_line(logs, state.global_step, state.max_steps)}")
            for key in ("loss", "grad_norm"):  # reduced values: the same on every rank
                value = logs.get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise FloatingPointError(f"{self.ctx.name}: {key} is {value} at step {state.global_step}; lower "
                                             f"training.learning_rate or check the data (the last complete "
                                             f"checkpoint is kept)")

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # log at every checkpoint step: its saved log history then has every step's loss
            control.should_log = True
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_save(self, args, state, control, **kwargs):
        dist.barrier()
        if dist.is_main():
            marker = Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER
            marker.write_text(f"{state.global_step}\n")
        dist.barrier()
        fault_point(self.ctx.name, "after_checkpoint", self.ctx.kind)
        if dist.is_main():
            rotate_checkpoints(Path(args.output_dir).parent, self.save_total_limit)


def run_train_loss(trainer, result, resumed_from: Optional[str]) -> float:
    """The mean training loss over all of the run's steps, also after a resume: TrainOutput.training_loss
    averages only the steps of this train() call, so the steps up to the checkpoint come from the log history
    restored with it (each logged loss times the steps it covers; every checkpoint step is a logging step)."""
    start, covered, before = checkpoint_step(resumed_from) if resumed_from else 0, 0, 0.0
    for entry in trainer.state.log_history:
        if "loss" in entry and covered < entry["step"] <= start:
            before += entry["loss"] * (entry["step"] - covered)
            covered = entry["step"]
    if covered != start:
        raise RuntimeError(f"{resumed_from}: its log history covers steps up to {covered}, not {start}; the loss "
                           f"before the resume is unknown (a checkpoint written before every checkpoint step was "
                           f"logged); re-run the stage with --force")
    steps = trainer.state.global_step
    return (before + result.training_loss * (steps - start)) / max(steps, 1)


def our_console(trainer):
    """The Trainer without its tqdm bar and its printed log dicts: TrackerCallback prints our lines instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


FIRST_KEYS = ("loss", "grad_norm", "learning_rate")


def log_line(logs: dict, step: int, max_steps: int) -> str:
    """`step 2/6  loss 0.0205  grad_norm 0.133  learning_rate 8.33e-05  ...  epoch 1`: a Trainer log as one line."""
    if "train_runtime" in logs:  # the end-of-training record
        head = "finished"
    else:
        head = f"step {step}/{max_steps}"
    order = [k for k in FIRST_KEYS if k in logs] + sorted(k for k in logs if k not in FIRST_KEYS and k != "epoch")
    values = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ((k, logs[k]) for k in order)]
    if "epoch" in logs:
        values.append(f"epoch {logs['epoch']:.3g}")
    return "  ".join([head] + values)


def peft_config(lora: LoraConfig) -> PeftLoraConfig:
    targets = list(lora.target_modules)
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                          target_modules="all-linear" if targets == ["all-linear"] else targets)


def apply_lora(model, lora: LoraConfig):
    return get_peft_model(model, peft_config(lora))


def save_final(trainer, tokenizer, out_dir: Path, merge_onto: Optional[str] = None,
               model_cfg: Optional[ModelConfig] = None, card: Optional[str] = None) -> Path:
    """<dir>/model (model + tokenizer + `card` as README.md), written to <dir>/.model.tmp that rank 0 renames:
    never half a model.

    Every rank calls trainer.save_model (under ZeRO-3 it gathers the shards; rank 0 writes). With `merge_onto`
    (the base model of a LoRA run that saves full weights) the adapter goes to <dir>/adapter and rank 0 merges
    it into a fresh copy of that base, loaded with `model_cfg`'s dtype. The Trainer's training_args.bin (a
    pickle) is left out, beside the weights and the adapter: the stage's config.yaml says it all."""
    final, staged, adapter = model_dir(out_dir), Path(out_dir) / ".model.tmp", Path(out_dir) / "adapter"
    if dist.is_main() and staged.exists():
        shutil.rmtree(staged)
    dist.barrier()
    trainer.save_model(str(adapter if merge_onto else staged))
    dist.barrier()
    # Training is over: later from_pretrained calls in this process (the LoRA merge, a next stage) must not
    # build their models inside ZeRO-3's partitioning context, which needs every rank.
    unset_hf_deepspeed_config()
    if dist.is_main():
        if merge_onto:
            base = load_model(merge_onto, model_cfg.dtype, "eager", model_cfg.trust_remote_code)
            PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(staged))
        tokenizer.save_pretrained(str(staged))
        for directory in (staged, adapter):
            (directory / "training_args.bin").unlink(missing_ok=True)
        if card:
            (staged / "README.md").write_text(card)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    dist.barrier()
    return final
