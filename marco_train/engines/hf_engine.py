"""The `hf` generation engine: transformers models behind the search's engine interface (base.py).

`HFEngine` is written here rather than calling `model.generate` because the search needs what generate does
not give: continuous batching across requests (a finished row's slot is refilled at the next step),
reuse of the KV cache of every stored prefix (prefix_cache.py), per-row seeded sampling (hf_ops.py) and
raw log-probs. It drives the model's own forward with a slot-indexed KV store (one row per running sample,
right-aligned, per-row lengths) passed as `past_key_values`, plus an explicit 4D mask and position ids.
Supported: decoder-only models with full attention whose layers call `past_key_values.update` (Llama,
Qwen2, Mistral without sliding window, ...).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import Completion, Engine, SamplingParams, derive_seed
from .confidence import step_confidence
from .hf_ops import SlotView, sample_tokens
from .prefix_cache import PrefixCache, trim_pieces


@dataclass
class _Request:
    rid: Any
    prompt: List[int]
    params: SamplingParams
    done: List[Optional[Completion]] = field(default_factory=list)


class HFEngine(Engine):
    def __init__(self, model, tokenizer, max_batch_rows: int = 128, prefix_cache_mb: float = 512,
                 feed_limit: int = 12, name: str = "hf"):
        cfg = model.config
        kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"} or getattr(cfg, "use_sliding_window", False):
            raise ValueError(f"HFEngine supports full-attention decoder models only ({cfg.model_type} has layer "
                             f"types {sorted(kinds)}); use engine: vllm for this model")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.layers = cfg.num_hidden_layers
        self.heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_positions = getattr(cfg, "max_position_embeddings", 1 << 20)
        self.rows = max_batch_rows
        self.feed_limit = feed_limit
        per_token = self.layers * 2 * self.heads * self.head_dim * torch.finfo(self.dtype).bits // 8
        self.cache = PrefixCache(max(1, int(prefix_cache_mb * 2**20 // per_token)))
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {e for e in eos if e is not None}
        self.eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        self.vocab = None  # decoded text of every token, built on first use of stop strings
        self.stop_chars: Dict[str, Any] = {}
        self.waiting: deque = deque()
        self.reserved = 0  # rows promised to siblings of a leader row still feeding its tail
        self.active: List[Tuple[_Request, int]] = []  # slot -> (request, sample index)
        self.store = None  # [layers, 2, rows, heads, width, dim]
        self.width = 0
        self.steps_cap = 0
        self.stats = {"forward_seconds": 0.0, "confidence_seconds": 0.0, "prefill_tokens": 0, "reused_tokens": 0}

    # ------------------------------------------------------------------ public
    def add_request(self, request_id, prompt_ids, params: SamplingParams) -> None:
        if not 1 <= params.n <= self.rows:
            raise ValueError(f"request {request_id}: n={params.n} must be in 1..max_batch_rows ({self.rows})")
        if not prompt_ids:
            raise ValueError(f"request {request_id}: empty prompt")
        if len(prompt_ids) >= self.max_positions:
            raise ValueError(f"request {request_id}: prompt of {len(prompt_ids)} tokens does not fit the model's "
                             f"{self.max_positions} positions")
        self.waiting.append(_Request(request_id, list(prompt_ids), params, [None] * params.n))

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.active)

    def step(self):
        with torch.no_grad():
            out = self._retire(self._admit())  # a first token can already finish a row (eos, max_tokens=1)
            if self.active:
                out += self._retire(self._decode())
        return out

    # ------------------------------------------------------------------ state
    def _ensure(self, width: int, steps: int) -> None:
        """Grow the KV store to `width` columns (+1 scratch column for padding writes) and the per-row buffers."""
        dev = self.device
        if self.store is None or width + 1 > self.width:
            new_width = max(width + 1, 2 * self.width, 64)
            store = torch.zeros(self.layers, 2, self.rows, self.heads, new_width, self.head_dim, dtype=self.dtype,
                                device=dev)
            if self.store is not None:
                store[..., :self.width - 1, :] = self.store[..., :self.width - 1, :]
            self.store, self.width = store, new_width
        if steps > self.steps_cap:
            cap, old, rows = max(steps, 2 * self.steps_cap), self.steps_cap, self.rows
            bufs = {"out_ids": (torch.long, ()), "out_lp": (torch.float32, ()), "out_conf": (torch.float32, ()),
                    "top_ids": (torch.long, (5,)), "top_lp": (torch.float32, (5,)), "uniform": (torch.float32, ())}
            for name, (dtype, extra) in bufs.items():
                buf = torch.zeros(rows, cap, *extra, dtype=dtype, device=dev)
                if old:
                    buf[:, :old] = getattr(self, name)
                setattr(self, name, buf)
            if not old:
                # per-row scalars packed in two tensors (moving a row is one copy each); names are column views
                self.ints = torch.zeros(rows, len(_INT_COLUMNS), dtype=torch.long, device=dev)
                self.floats = torch.ones(rows, len(_FLOAT_COLUMNS), device=dev)
                for i, name in enumerate(_INT_COLUMNS):
                    setattr(self, name, self.ints[:, i])
                for i, name in enumerate(_FLOAT_COLUMNS):
                    setattr(self, name, self.floats[:, i])
                self.feed = torch.zeros(rows, self.feed_limit, dtype=torch.long, device=dev)
            self.steps_cap = cap

    def _forward(self, rows: slice, input_ids, positions, write_cols, allowed):
        """One model forward over slot rows; `allowed` [b, q, width] says which cache columns each query sees."""
        started = time.perf_counter()
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        view = SlotView(self.store, rows, write_cols, allowed.shape[-1])
        out = self.model(input_ids=input_ids, attention_mask=mask[:, None], position_ids=positions,
                         past_key_values=view, use_cache=True, logits_to_keep=1)
        self.stats["forward_seconds"] += time.perf_counter() - started
        return out.logits[:, -1].float()

    # ------------------------------------------------------------------ admission
    def _admit(self):
        """Start waiting requests in free rows. A request copies the KV of its longest stored prefix; a short rest
        (<= feed_limit tokens, e.g. the separator and tag of a new segment) is fed through the next decode steps
        of its rows, a longer one (a new prompt) is prefilled here in one batched forward."""
        b = len(self.active)
        free = self.rows - b - self.reserved
        fed, prefill = [], []
        while self.waiting and self.waiting[0].params.n <= free:
            req = self.waiting.popleft()
            free -= req.params.n
            matched, pieces = self.cache.match(req.prompt)
            if matched >= len(req.prompt):  # keep at least one token to run: its logits give the first sample
                matched = len(req.prompt) - 1
                pieces = trim_pieces(pieces, matched)
            self.stats["reused_tokens"] += matched
            self.stats["prefill_tokens"] += len(req.prompt) - matched
            (fed if len(req.prompt) - matched <= self.feed_limit else prefill).append((req, matched, pieces))
        if not fed and not prefill:
            return []
        todo = [r for r, _, _ in fed + prefill]
        self._ensure(max(len(r.prompt) + r.params.max_tokens for r in todo), max(r.params.max_tokens for r in todo))
        rows, entries, lens, pending, feed_left, spawn = [], [], [], [], [], []
        for req, matched, pieces in fed:
            kv = (torch.cat(pieces, dim=3) if len(pieces) > 1 else pieces[0]) if matched else None
            tail = req.prompt[matched:]
            # siblings share the tail: one row feeds it, the others are copied from it when it samples first
            leaders = 1 if len(tail) > 1 else req.params.n
            for k in range(leaders):
                s = len(self.active)
                self.active.append((req, k))
                if matched:
                    self.store[:, :, s, :, :matched] = kv
                if len(tail) > 1:
                    self.feed[s, :len(tail) - 1] = torch.tensor(tail[1:], dtype=torch.long)
                rows.append(s)
                entries.append((req, k))
                lens.append(matched)
                pending.append(tail[0])
                feed_left.append(len(tail) - 1)
                spawn.append(req.params.n - leaders)
            self.reserved += req.params.n - leaders
        if rows:
            idx = self._reset_rows(rows, entries)
            self.lens[idx], self.pending[idx] = self._long(lens), self._long(pending)
            self.feed_left[idx], self.spawn[idx] = self._long(feed_left), self._long(spawn)
            self.feed_pos[idx] = 0
        return self._prefill(prefill) if prefill else []

    def _prefill(self, batch):
        first = len(self.active)  # first sample of each request: contiguous rows; their siblings after them
        m = len(batch)
        slots: List[List[int]] = []
        sibling = first + m
        for i, (req, _, _) in enumerate(batch):
            slots.append([first + i] + list(range(sibling, sibling + req.params.n - 1)))
            sibling += req.params.n - 1
        self.active.extend([None] * (sibling - first))
        tails = []
        for i, (req, matched, pieces) in enumerate(batch):
            s = first + i
            if matched:
                self.store[:, :, s, :, :matched] = torch.cat(pieces, dim=3) if len(pieces) > 1 else pieces[0]
            self.lens[s] = matched
            tails.append(req.prompt[matched:])
        q = max(len(t) for t in tails)  # tails left-padded: the last query is real in every row
        pad = torch.tensor([q - len(t) for t in tails], device=self.device)
        ids = torch.tensor([[0] * (q - len(t)) + t for t in tails], device=self.device)
        j = torch.arange(q, device=self.device)[None, :]
        lens = self.lens[first:first + m, None]
        real = j >= pad[:, None]
        positions = torch.where(real, lens + j - pad[:, None], torch.zeros_like(j))
        write_cols = torch.where(real, positions, torch.full_like(j, self.width - 1))  # padding -> scratch column
        width = int((lens[:, 0] + q - pad).max())
        cols = torch.arange(width, device=self.device)[None, None, :]
        allowed = (cols <= positions[:, :, None]) | (~real[:, :, None] & (cols == 0))
        logits = self._forward(slice(first, first + m), ids, positions, write_cols, allowed)
        self.lens[first:first + m] += q - pad
        rows, row_logits = [], []
        for i, (req, _, _) in enumerate(batch):
            for k, s in enumerate(slots[i]):
                if k:
                    n_cols = int(self.lens[slots[i][0]])
                    self.store[:, :, s, :, :n_cols] = self.store[:, :, slots[i][0], :, :n_cols]
                    self.lens[s] = n_cols
                self.active[s] = (req, k)
                rows.append(s)
                row_logits.append(i)
        rows_t = self._reset_rows(rows, [self.active[s] for s in rows])
        return self._sample(logits[torch.tensor(row_logits, device=self.device)], rows_t)

    def _long(self, values):
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _reset_rows(self, rows: List[int], entries: List[Tuple[_Request, int]]):
        """Sampling state of fresh rows (a freed slot keeps its last occupant's values until this)."""
        idx = self._long(rows)
        params = [req.params for req, _ in entries]
        self.count[idx], self.spawn[idx], self.feed_left[idx] = 0, 0, 0
        self.temp[idx] = torch.tensor([float(p.temperature) for p in params], device=self.device)
        self.top_p[idx] = torch.tensor([float(p.top_p) for p in params], device=self.device)
        self.top_k[idx] = self._long([p.top_k for p in params])
        self.limit[idx] = self._long([min(req.params.max_tokens, self.max_positions - len(req.prompt))
                                      for req, _ in entries])
        self.eos_stops[idx] = self._long([int(not p.ignore_eos) for p in params])
        for s, (req, k) in zip(rows, entries):  # each sample its own generator: batch-independent draws
            gen = torch.Generator().manual_seed(derive_seed(req.params.seed, k))
            self.uniform[s, :req.params.max_tokens] = torch.rand(req.params.max_tokens, generator=gen).to(self.device)
        return idx

    # ------------------------------------------------------------------ decoding
    def _decode(self):
        b = len(self.active)
        lens = self.lens[:b]
        width = int(lens.max()) + 1
        cols = torch.arange(width, device=self.device)[None, None, :]
        allowed = cols <= lens[:, None, None]
        logits = self._forward(slice(0, b), self.pending[:b, None], lens[:, None], lens[:, None], allowed)
        self.lens[:b] += 1
        forced = self.feed_left[:b] > 0  # rows still feeding their prompt's last tokens: no sample yet
        if bool(forced.any()):
            f = forced.nonzero().squeeze(1)
            self.pending[f] = self.feed[f, self.feed_pos[f]]
            self.feed_pos[f] += 1
            self.feed_left[f] -= 1
            rows = (~forced).nonzero().squeeze(1)
        else:
            rows = torch.arange(b, device=self.device)
        spawning = rows[self.spawn[rows] > 0].tolist()
        if spawning:  # leaders that fed a shared tail: their siblings start from a copy of their rows
            source = rows.tolist()
            extra, extra_entries, extra_logits = [], [], []
            for r in spawning:
                req, _ = self.active[r]
                n_cols = int(self.lens[r])
                for k in range(1, req.params.n):
                    s = len(self.active)
                    self.active.append((req, k))
                    self.store[:, :, s, :, :n_cols] = self.store[:, :, r, :, :n_cols]
                    self.lens[s] = n_cols
                    extra.append(s)
                    extra_entries.append((req, k))
                    extra_logits.append(source.index(r))
                self.reserved -= req.params.n - 1
                self.spawn[r] = 0
            self._reset_rows(extra, extra_entries)
            logits = torch.cat([logits[rows] if len(rows) != b else logits, logits[rows][extra_logits]])
            rows = torch.cat([rows, torch.tensor(extra, device=self.device)])
            return self._sample(logits, rows)
        return self._sample(logits[rows] if len(rows) != b else logits, rows) if len(rows) else []

    def _sample(self, logits, rows):
        """Sample one token per row with the row's own uniforms; record raw log-probs; return finished rows."""
        count = self.count[rows]
        token = sample_tokens(logits, self.temp[rows], self.top_k[rows], self.top_p[rows], self.uniform[rows, count])
        started = time.perf_counter()
        conf, lp, top_lp, top_ids = step_confidence(logits, token)
        self.stats["confidence_seconds"] += time.perf_counter() - started
        self.out_ids[rows, count], self.out_lp[rows, count], self.out_conf[rows, count] = token, lp, conf
        self.top_ids[rows, count], self.top_lp[rows, count] = top_ids, top_lp
        self.count[rows] = count + 1
        self.pending[rows] = token
        done = (torch.isin(token, self.eos) & (self.eos_stops[rows] > 0)) | (count + 1 >= self.limit[rows])
        candidates = self._stop_candidates(token)
        finished = []
        for r, is_done, cand in zip(rows.tolist(), done.tolist(), candidates):
            if is_done or (cand and self._hit_stop(r)):
                finished.append(r)
        return finished

    def _stop_candidates(self, token) -> List[bool]:
        """Rows whose new token contains the last character of some stop string (only those are decoded)."""
        stops = {s for req, _ in self.active for s in req.params.stop}
        if not stops:
            return [False] * len(token)
        if self.vocab is None:
            self.vocab = [self.tokenizer.decode([i]) for i in range(len(self.tokenizer))]
        hit = torch.zeros(len(token), dtype=torch.bool)
        for ch in {s[-1] for s in stops}:
            if ch not in self.stop_chars:
                self.stop_chars[ch] = torch.tensor([ch in t for t in self.vocab] + [False])
            table = self.stop_chars[ch]
            hit |= table[token.cpu().clamp_max(len(table) - 1)]
        return hit.tolist()

    def _hit_stop(self, r: int) -> bool:
        req = self.active[r][0]
        if not req.params.stop:
            return False
        n = int(self.count[r])
        window = max(len(s) for s in req.params.stop) + 2
        text = self.decode(self.out_ids[r, max(0, n - window):n].tolist())
        return any(s in text for s in req.params.stop)

    # ------------------------------------------------------------------ finishing
    def _retire(self, finished: List[int]):
        """Build completions of finished rows, store their KV in the prefix cache, move the live rows to the front."""
        if not finished:
            return []
        out = []
        rows = torch.tensor(finished, device=self.device)
        counts, feds = self.count[rows].tolist(), self.lens[rows].tolist()
        width = max(counts)
        ids_all, lp_all, conf_all = (getattr(self, name)[rows, :width].tolist()
                                     for name in ("out_ids", "out_lp", "out_conf"))
        for i, r in enumerate(finished):
            req, k = self.active[r]
            n, fed = counts[i], feds[i]
            ids = ids_all[i][:n]
            if req.done[k] is not None:
                raise RuntimeError(f"HFEngine: sample {k} of request {req.rid} finished twice (row bookkeeping bug)")
            self.cache.insert((req.prompt + ids)[:fed], self.store[:, :, r, :, :fed])
            req.done[k] = self._completion(req, r, ids, lp_all[i][:n], conf_all[i][:n])
            if all(c is not None for c in req.done):
                out.append((req.rid, req.done))
        live = len(self.active) - len(finished)
        gone = set(finished)
        holes = [r for r in sorted(gone) if r < live]
        movers = [r for r in range(live, len(self.active)) if r not in gone]
        if holes:
            src, dst = torch.tensor(movers, device=self.device), torch.tensor(holes, device=self.device)
            for h, m, n_cols in zip(holes, movers, self.lens[src].tolist()):  # slices: ~4x faster than a gather
                self.store[:, :, h, :, :n_cols] = self.store[:, :, m, :, :n_cols]
            for name in _ROW_BUFFERS:
                buf = getattr(self, name)
                buf[dst] = buf[src]
            for h, m in zip(holes, movers):
                self.active[h] = self.active[m]
        del self.active[live:]
        return out

    def _completion(self, req: _Request, r: int, ids: List[int], logprobs: List[float],
                    confidences: List[float]) -> Completion:
        n = len(ids)
        reason = "length"
        if ids and ids[-1] in self.eos_ids and not req.params.ignore_eos:
            reason, n = "eos", n - 1
            ids, logprobs, confidences = ids[:n], logprobs[:n], confidences[:n]
        text = self.decode(ids)
        cut = [text.find(s) + len(s) for s in req.params.stop if s in text]
        if cut:
            reason, text = "stop", text[:min(cut)]
        self.tokens_generated += n  # returned tokens (an end-of-turn token is not returned nor counted)
        k = min(req.params.logprobs, 5)
        top = []
        if k:
            top = [list(zip(i, lp)) for i, lp in zip(self.top_ids[r, :n, :k].tolist(), self.top_lp[r, :n, :k].tolist())]
        return Completion(text, ids, logprobs, top, confidences, reason)


_INT_COLUMNS = ("lens", "count", "pending", "top_k", "limit", "feed_left", "feed_pos", "spawn", "eos_stops")
_FLOAT_COLUMNS = ("temp", "top_p")
_ROW_BUFFERS = ("ints", "floats", "feed", "out_ids", "out_lp", "out_conf", "top_ids", "top_lp", "uniform")
