"""Exact prefix-shared DPO log-probs, packing, and the support matrix (which backends share, pack, both, neither).

Under causal attention a suffix token's log-prob depends only on the tokens before it, so chosen and rejected
can share the forward over prompt + shared response prefix. Each pair becomes ONE tree (layouts.tree_piece):

    [ trunk = prompt + prefix minus its last token | last, chosen suffix | last, rejected suffix ]

The trunk is causal; each branch attends to the trunk and causally to itself, never to the other branch.
Position ids continue from the end of the prefix in both branches. The last shared token is repeated at the
head of each branch (one extra token per pair) so that every scored token is predicted by one hidden state of
its own branch. Prefix tokens are scored once, in the trunk, and serve both responses. Packed, several trees
share one row back to back (sequence ids keep them apart); unpacked, each tree has its own padded row.

`tree_mask_mod` is the one definition of who may attend to whom; it builds both the dense [R, 1, T, T] mask
(sdpa, eager; on CPU the only path that trains, so packed rows are bounded by the micro-batch token budget)
and the FlexAttention block mask (flex_attention: blocks that are fully masked are skipped, no [T, T] tensor).

Why a tree mask in one forward rather than KV branching (prefix forward with use_cache, then the suffixes on
`past_key_values`): one forward keeps DDP, DeepSpeed ZeRO-3 (one all-gather pass per step) and gradient
checkpointing (which drops `past_key_values` in transformers) exactly as they are, the gradient reaches the
shared part through one graph, and it works unchanged for the frozen reference and for precomputing it.

Support matrix (`decide` for sharing, `decide_packing` for packing; null = where exact, true = raise if not,
false = never). README.md's Performance section has the table.
  share: sdpa, eager (dense tree mask), flex_attention (block mask; its backward is FlexAttention's and is not
         run here: torch refuses it on CPU, launchers/gpu_smoke.py checks it on a GPU); model types in
         SUPPORTED_MODEL_TYPES; no sliding-window layers (a 4D mask replaces the window, so it would not be exact).
  pack:  every attention in PACKING_ATTENTION, flash-attention included (unshared pieces: transformers reads the
         sequence starts from the position ids; for flash-attention these are its varlen kernels), sliding windows
         included (transformers combines window and packing); model types in SUPPORTED_MODEL_TYPES (an explicit
         true also packs other transformers models, unverified); never trust_remote_code models.
  both:  where both hold: sdpa, eager, flex_attention on the verified model types without sliding windows.
  Parallelism does not change a cell: DDP, DeepSpeed ZeRO-2/3, LoRA and gradient checkpointing all take every
  layout (ranks take the same number of micro-batches and LM-head chunks: dpo_batching.py).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
TREE_ATTENTION = ("sdpa", "eager", "flex_attention")
# Attention implementations that keep packed samples apart by their position ids (transformers' own models).
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")
# ... of which these attend a packed row through a dense [T, T] mask: exact, but the attention cost grows with the
# row length T, so their packed rows are kept to training.max_length (flash-attention and FlexAttention skip the
# work across samples and take longer rows).
DENSE_MASK_ATTENTION = ("sdpa", "eager")


def attention_of(config) -> str:
    return getattr(config, "_attn_implementation", None) or "eager"


def _sliding(config) -> bool:
    return "sliding_attention" in (getattr(config, "layer_types", None) or ()) or bool(
        getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None))


def _blocker(config, trust_remote_code: bool, remote_why: str, allowed, cannot: str, unverified: Optional[str]):
    """Why a feature cannot be used on this model (None: it can). unverified: the feature named in the message
    for a model type outside SUPPORTED_MODEL_TYPES (None: skip that check)."""
    attn = attention_of(config)
    if trust_remote_code:
        return remote_why
    if attn not in allowed:
        return f"attention '{attn}' {cannot} (use {', '.join(allowed)})"
    if unverified and config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type '{config.model_type}' is not verified for {unverified} ({', '.join(SUPPORTED_MODEL_TYPES)})"
    return None


def _settle(key: str, force: Optional[bool], reason: Optional[str], yes: str) -> Tuple[bool, str]:
    if reason is None:
        return True, yes
    if force:
        raise ValueError(f"{key}: true, but {reason}; leave it null (auto) or set false")
    return False, reason


def decide(config, force: Optional[bool] = None, trust_remote_code: bool = False) -> Tuple[bool, str]:
    """(share the prefix?, why) for a model config. force=None: when exact; True: raise if not; False: never."""
    if force is False:
        return False, "prefix_sharing: false"
    reason = _blocker(config, trust_remote_code, "a trust_remote_code model's attention may not take our masks",
                      TREE_ATTENTION, "cannot take a tree mask", "tree masks")
    if reason is None and _sliding(config):
        reason = "sliding-window attention layers: a 4D mask would replace the window"
    attn = attention_of(config)
    kind = "block mask" if attn == "flex_attention" else "dense tree mask"
    return _settle("prefix_sharing", force, reason, f"shared prefix computed once per pair ({attn}, {kind})")


def decide_packing(config, force: Optional[bool] = None, trust_remote_code: bool = False) -> Tuple[bool, str]:
    """(pack without padding?, why): several sequences or trees per row, kept apart exactly."""
    if force is False:
        return False, "packing: false"
    reason = _blocker(config, trust_remote_code, "a trust_remote_code model's attention may ignore the per-sample "
                      "position ids", PACKING_ATTENTION, "does not keep packed samples apart",
                      None if force else "packing")
    return _settle("packing", force, reason, f"packed without padding ({attention_of(config)})")


def dense_mask(config) -> bool:
    return attention_of(config) in DENSE_MASK_ATTENTION


def default_micro_tokens(config, per_device_batch_size: int, max_length: int) -> int:
    """The dpo stage's micro_batch_tokens: 0 (auto) = max_length on dense-mask attention (a packed row then costs at
    most one max-length row of attention), per_device_batch_size x max_length where the kernel skips across trees."""
    return max_length if dense_mask(config) else per_device_batch_size * max_length


def tree_mask_mod(seq_ids: torch.Tensor, branch_ids: torch.Tensor):
    """FlexAttention's mask_mod(b, h, q, kv) for rows of trees: True = q may attend to kv.

    Same tree (seq id) and causal in row order (trunk, then chosen, then rejected), kv in the trunk or in q's own
    branch; padding (-1) attends only to itself, so no row is empty. Indices may be scalars (vmap, block mask) or
    broadcasting tensors (the dense mask)."""
    def mask_mod(b, h, q, kv):
        seq_q, seq_kv = seq_ids[b, q], seq_ids[b, kv]
        branch_kv = branch_ids[b, kv]
        visible = (seq_q == seq_kv) & (seq_kv >= 0) & (kv <= q) & ((branch_kv == 0) | (branch_kv == branch_ids[b, q]))
        return visible | ((q == kv) & (seq_q < 0))

    return mask_mod


def dense_tree_mask(seq_ids: torch.Tensor, branch_ids: torch.Tensor, dtype: Optional[torch.dtype] = None):
    """[R, 1, T, T]: boolean (sdpa: True = attend), or additive in `dtype` (eager: 0 or the dtype's minimum)."""
    rows, width = seq_ids.shape
    idx = torch.arange(width, device=seq_ids.device)
    rows_idx = torch.arange(rows, device=seq_ids.device)[:, None, None]
    allowed = tree_mask_mod(seq_ids, branch_ids)(rows_idx, None, idx[None, :, None], idx[None, None, :])[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


_COMPILED = {}


def block_tree_mask(seq_ids: torch.Tensor, branch_ids: torch.Tensor):
    """The FlexAttention BlockMask of the same mask_mod (built by a compiled create_block_mask on CUDA, as torch
    recommends, so no [T, T] tensor is built there either)."""
    from torch.nn.attention.flex_attention import create_block_mask

    create = create_block_mask
    if seq_ids.is_cuda:
        create = _COMPILED.setdefault("create_block_mask", torch.compile(create_block_mask))
    rows, width = seq_ids.shape
    return create(tree_mask_mod(seq_ids, branch_ids), rows, None, width, width, device=seq_ids.device)


def tree_attention_mask(config, layout: Dict[str, torch.Tensor]):
    """The attention mask a model with `config` takes for a tree layout (dense for sdpa/eager, block for flex)."""
    attn, seq, branch = attention_of(config), layout["seq_ids"], layout["branch_ids"]
    if attn == "sdpa":
        return dense_tree_mask(seq, branch)
    if attn == "eager":  # eager adds the mask to the scores
        return dense_tree_mask(seq, branch, torch.float32)
    if attn == "flex_attention":
        return block_tree_mask(seq, branch)
    raise ValueError(f"attention '{attn}' cannot take a tree mask; prefix sharing should have been off (decide())")
