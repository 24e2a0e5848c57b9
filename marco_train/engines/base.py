"""Generation engines behind the search (and usable by eval): token-id prompts in, sampled completions out.

The interface is vLLM's engine loop (`add_request` / `step` / `has_unfinished`), so a vLLM or HTTP-server
engine fits beside the `hf` one. A request carries its own seed: sample j of a request draws its random
numbers from a generator seeded by (seed, j) alone, so what a request samples does not depend on what else
is in the batch (up to float rounding of batched matmuls). Every returned token comes with its RAW
log-prob and the top-5 raw log-probs (log-softmax at temperature 1, before temperature/top-p/top-k) and
its v1 confidence (confidence.py).

`HFEngine` (hf_engine.py) implements it with transformers; `VLLMEngine` (vllm_engine.py) with vLLM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..io import DataError
from ..prompts import prompt_ids


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: Tuple[str, ...] = ()  # generation ends once the text contains one; it is kept in the text
    seed: int = 0
    logprobs: int = 5  # top log-probs returned per token (0-5); confidences are computed on the top 5 regardless
    ignore_eos: bool = False  # keep generating past the end-of-turn token (benchmarks of fixed lengths)


@dataclass
class Completion:
    text: str  # decoded generated tokens, cut right after the first stop string (eos excluded)
    token_ids: List[int]  # generated ids (eos excluded); the last one may reach past a stop string, as in vLLM
    logprobs: List[float]  # raw log-prob of each generated token
    top_logprobs: List[List[Tuple[int, float]]]  # top `params.logprobs` (token id, raw log-prob) at each position
    confidences: List[float]  # v1 c_i of each generated token
    finish_reason: str  # "stop" (stop string) | "eos" | "length"

    @property
    def truncated(self) -> bool:
        """Hit max_tokens before a stop string or the end-of-turn token."""
        return self.finish_reason == "length"


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts, e.g. (global seed, tree id, node id): the same parts give the same seed."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


class Engine:
    """Base: subclasses implement add_request/step/has_unfinished; generate() is the blocking convenience."""
    tokenizer: Any
    name: str = ""
    tokens_generated: int = 0
    max_positions: Optional[int] = None  # prompt + generated tokens the model can hold (None: unknown)

    def add_request(self, request_id: Any, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        raise NotImplementedError

    def step(self) -> List[Tuple[Any, List[Completion]]]:
        """Advance all running requests; returns (request id, its n completions in sample order) for finished ones."""
        raise NotImplementedError

    def has_unfinished(self) -> bool:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text exactly as `tokenizer.decode` gives it (special tokens kept)."""
        fast = getattr(self, "_fast_decode", None)
        if fast is None:
            backend = getattr(self.tokenizer, "_tokenizer", None)
            plain = backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", False)
            # the Rust tokenizer directly: transformers' decode wrapper costs ~10x more per call
            fast = (lambda x: backend.decode(list(x), skip_special_tokens=False)) if plain else self.tokenizer.decode
            self._fast_decode = fast
        return fast(ids)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]):
        """Blocking: one list of n completions per prompt, in prompt order."""
        per = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        for i, (p, sp) in enumerate(zip(prompts, per)):
            self.add_request(("generate", i), p, sp)
        out: Dict[int, List[Completion]] = {}
        while len(out) < len(prompts):
            for rid, comps in self.step():
                out[rid[1]] = comps
        return [out[i] for i in range(len(prompts))]


def check_prompts_fit(engine: Engine, task, problems, source: str = "") -> None:
    """Every problem's prompt must leave the model room to generate, checked before anything is generated (a
    too-long prompt would otherwise fail mid-run, far from the problem that caused it)."""
    limit = engine.max_positions
    if not limit:
        return
    for p in problems:
        n = len(prompt_ids(engine.tokenizer, task, p.question))
        if n >= limit:
            raise DataError(f"{source + ': ' if source else ''}problem '{p.id}': its prompt is {n} tokens, and the "
                            f"model ({engine.name}) has {limit} positions; shorten or drop the problem, or use a "
                            f"model with more positions")
