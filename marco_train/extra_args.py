"""`training.extra_args`: further keyword arguments of transformers' TrainingArguments for the sft and dpo stages
(`lr_scheduler_type`, `optim`, `adam_beta2`, `max_grad_norm`, `ddp_find_unused_parameters`, ...).

Checked at plan time (only when the mapping is not empty, since it imports transformers): every key must be a
field of TrainingArguments, and a key the stage sets itself is refused by name with the key to set instead (the
global seed, the batch sizes, DeepSpeed, W&B, the checkpoint directory, ...). The values go to TrainingArguments
as given (train/common.py), over two defaults of ours: `ddp_find_unused_parameters: false` (the causal LMs we
train use every parameter in each forward; a mixture-of-experts model may need `true`) and
`dataloader_num_workers: 0`. The keys are part of the config, so they are part of the stage's fingerprint.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, Optional

# TrainingArguments fields the stage sets itself -> what to set instead
REFUSED = {
    "output_dir": "the stage directory decides it (<stage dir>/checkpoints)",
    "seed": "the pipeline's top-level `seed`", "data_seed": "the pipeline's top-level `seed`",
    "per_device_train_batch_size": "training.per_device_batch_size",
    "gradient_accumulation_steps": "training.global_batch_size (accumulation is derived from it)",
    "deepspeed": "training.deepspeed", "report_to": "the wandb section (the stage's tracker owns the W&B run)",
    "learning_rate": "training.learning_rate", "max_steps": "training.max_steps",
    "num_train_epochs": "training.epochs", "warmup_steps": "training.warmup_ratio",
    "warmup_ratio": "training.warmup_ratio", "weight_decay": "training.weight_decay",
    "bf16": "training.precision", "fp16": "training.precision",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "activation_checkpointing": "training.gradient_checkpointing",
    "save_strategy": "training.save_steps", "save_steps": "training.save_steps",
    "save_total_limit": "training.save_total_limit", "logging_steps": "the stage's log_every",
    "use_cpu": "nothing: the device decides it", "ddp_backend": "nothing: the device decides it (nccl or gloo)",
    "remove_unused_columns": "nothing: the stage's collators need every column",
    "disable_tqdm": "--quiet / --verbose on the command line",
    "resume_from_checkpoint": "nothing: the stage resumes from its last complete checkpoint",
    "push_to_hub": "launchers/push_to_hub.py after the stage",
    # the sft stage's own SFTConfig keys
    "max_length": "training.max_length", "packing": "the sft stage's packing",
    "packing_strategy": "the sft stage's packing", "completion_only_loss": "nothing: the sft stage's loss is on "
                                                                           "the response only",
}
DEFAULTS = {"ddp_find_unused_parameters": False, "dataloader_num_workers": 0}
_SIMPLE = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _fields() -> Dict[str, Any]:
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


def problem(extra: Optional[Dict[str, Any]]) -> Optional[str]:
    """What is wrong with an extra_args mapping, or None (a config field check: config.checked)."""
    if not extra:
        return None
    fields = _fields()
    for key, value in dict(extra).items():
        if key in REFUSED:
            return f"'{key}' is set by the stage itself; use {REFUSED[key]}"
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            return (f"'{key}' is not a field of transformers.TrainingArguments"
                    + (f" (did you mean '{near[0]}'?)" if near else "") + "; see its documentation for the keys")
        declared = fields[key].type
        kind = declared if isinstance(declared, type) else {t.__name__: t for t in _SIMPLE}.get(str(declared))
        want = _SIMPLE.get(kind, ())
        if want and value is not None and (not isinstance(value, want) or (bool not in want and
                                                                           isinstance(value, bool))):
            return f"'{key}': {value!r} is not a {kind.__name__} (TrainingArguments.{key})"
    return None


def check(value, section=None) -> Optional[str]:
    """The config field check (config.checked) of training.extra_args, given as an OmegaConf mapping."""
    from omegaconf import DictConfig, OmegaConf

    return problem(OmegaConf.to_container(value) if isinstance(value, DictConfig) else value)


def merged(extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The keyword arguments extra_args adds to TrainingArguments: our defaults, then the user's keys."""
    return {**DEFAULTS, **dict(extra or {})}
