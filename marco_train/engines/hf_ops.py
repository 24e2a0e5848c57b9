"""Stateless tensor pieces of the hf engine (hf_engine.py): the `past_key_values` view of its slot KV store,
and token choice (temperature, top-k, top-p, inverse-CDF sampling with each row's own uniforms)."""

from __future__ import annotations

import torch


class SlotView:
    """`past_key_values` for one forward over slot rows `rows`: writes the new K/V at per-row columns and hands
    the layer views [rows, heads, :width, dim] of the store back to the attention."""

    def __init__(self, store, rows: slice, write_cols, width: int):
        self.store, self.rows, self.write_cols, self.width = store, rows, write_cols, width
        self.row_idx = torch.arange(rows.start, rows.stop)[:, None].expand_as(write_cols)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.store[layer_idx, 0], self.store[layer_idx, 1]
        keys[self.row_idx, :, self.write_cols] = key_states.transpose(1, 2).to(keys.dtype)
        values[self.row_idx, :, self.write_cols] = value_states.transpose(1, 2).to(values.dtype)
        return keys[self.rows, :, :self.width], values[self.rows, :, :self.width]


def sample_tokens(logits, temp, top_k, top_p, uniform):
    """One token per row: logits [rows, vocab] scaled by the row's temperature (0 = greedy), filtered by its
    top-k / top-p, then drawn by inverse CDF with the row's uniform in [0, 1) (so a draw depends on the row's
    own generator only, not on the batch)."""
    scaled = logits / temp.clamp_min(1e-5)[:, None]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        scaled = filter_top_k_top_p(scaled, top_k, top_p)
    cdf = torch.softmax(scaled, dim=-1).cumsum(-1)
    u = uniform * cdf[:, -1]
    token = torch.searchsorted(cdf, u[:, None]).squeeze(1).clamp_max(logits.shape[-1] - 1)
    return torch.where(temp == 0, logits.argmax(-1), token)


def filter_top_k_top_p(scaled, top_k, top_p):
    """Mask logits outside each row's top-k / nucleus top-p (applied after temperature, as vLLM does)."""
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
    drop = (top_k[:, None] > 0) & (rank >= top_k[:, None])
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    drop |= (probs.cumsum(-1) - probs) > top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(1, order, sorted_logits)
