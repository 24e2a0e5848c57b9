"""Load a model and tokenizer by hub name or local path, with dtype and attention chosen by device.

trust_remote_code stays off unless the config turns it on; weights load from safetensors only.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(name: str = "auto"):
    """auto: bf16 on a GPU that supports it, else fp32 (bf16 on CPU is ~8x slower per step here)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if on_gpu() and torch.cuda.is_bf16_supported() else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype/precision '{name}': use auto, fp32, bf16 or fp16")
    return table[name]


def resolve_attention(name: str = "auto") -> str:
    """auto: flash_attention_2 when flash-attn is installed and CUDA is present, else sdpa."""
    if name != "auto":
        return name
    return "flash_attention_2" if on_gpu() and importlib.util.find_spec("flash_attn") else "sdpa"


def resolve_gradient_checkpointing(value) -> bool:
    """None: on for GPUs (memory), off on CPU (it made a CPU step ~3.5x slower here)."""
    return on_gpu() if value is None else bool(value)


def _looks_local(name_or_path: str | Path) -> bool:
    """Absolute, ./, ~, more than one '/', or a Path: it can only be a directory, not a hub repo id."""
    text = str(name_or_path)
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or isinstance(name_or_path, Path)


def check_local(name_or_path: str | Path) -> None:
    """A name that can only be a directory must exist: transformers would otherwise report it as a malformed hub
    repo id. Offline, a hub name must be in the local cache (hub_model_problem)."""
    text = str(name_or_path)
    if _looks_local(name_or_path) and not Path(text).expanduser().is_dir():
        hint = " (SmolLM2: run `marco-train prepare-smollm2` first)" if "smollm2" in text.lower() else ""
        raise FileNotFoundError(f"{text}: no such model directory; point model.name_or_path at a saved model or a "
                                f"hub name{hint}")
    problem = hub_model_problem(text)
    if problem:
        raise FileNotFoundError(problem)


def env_on(*names: str) -> bool:
    """Is any of these environment variables set to 1 / on / yes / true (as huggingface_hub reads them)?"""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in names)


def hub_model_problem(name: str) -> Optional[str]:
    """Offline (HF_HUB_OFFLINE=1), a hub model name must already be in the local Hugging Face cache: what to do
    if it is not, else None. Called at plan time (the config's model.name_or_path) and before loading."""
    if not name or not env_on(*OFFLINE_VARIABLES) or _looks_local(name) or Path(name).exists():
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id: transformers will say so
        return None
    if isinstance(cached, str):
        return None
    return (f"model '{name}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub is "
            f"offline ({'/'.join(OFFLINE_VARIABLES)}); download it where there is network (`hf download {name}`) "
            f"or point model.name_or_path at a local copy")


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    check_local(name_or_path)
    tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # decoder-only checkpoints often ship without a pad token
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{name_or_path}: tokenizer has no chat template; the prompt contract needs one "
                         f"(use the instruct checkpoint)")
    return tok


def load_model(name_or_path: str | Path, dtype: str = "auto", attn_implementation: str = "auto",
               trust_remote_code: bool = False, device=None):
    from transformers import AutoModelForCausalLM

    check_local(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=resolve_dtype(dtype), attn_implementation=resolve_attention(attn_implementation),
        trust_remote_code=trust_remote_code, use_safetensors=True)
    return model.to(device) if device is not None else model


def model_dir(stage_dir: Path) -> Path:
    """Where a model-producing stage (bootstrap, sft, dpo) saves its `save_pretrained` directory."""
    return Path(stage_dir) / "model"
