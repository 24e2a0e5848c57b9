"""Log-probs of DPO pair responses, computed only where they are scored, in chunks, with an fp32 log-softmax.

A full-vocabulary logit tensor for every position (152k vocab x 8k tokens in fp32 is ~5 GB) is never built:
the model runs with `logits_to_keep=1` and `output_hidden_states=True`, the final hidden states are gathered at
the scored positions only, and the LM head + log-softmax run over `chunk_size` of them at a time under
activation checkpointing (the backward recomputes one chunk's logits at a time). The LM head is called as a
module, so DeepSpeed ZeRO-3's hooks gather its (possibly tied) weight. TRL's fused head (`add_fused_lm_head`)
does the same for "position j predicts token j+1" rows; we need arbitrary (position, target) pairs because the
prefix-shared layout (prefix_sharing.py) is a tree, so this 40-line version is ours.

The seam: a *layout* is the batch dict built from tokenized pairs (layouts.build_layout, through
dpo_data.PairCollator): rows, position ids, and for every scored token the hidden state that predicts it and its
segment. `pair_logps(model, layout)` turns any layout (unshared or prefix-shared, padded or packed) into per-pair
segment sums (losses.SideLogps), and the loss cannot tell the layouts apart. Trees get their attention mask here,
at forward time on the model's device, in the form the model's attention takes (prefix_sharing.tree_attention_mask).
Under ZeRO-3 every module call is a collective, so a layout may fix the number of LM-head chunks (`score_budget`:
the most scored positions any rank has at that micro-batch; dpo_batching.py sets it).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from .layouts import SEGMENTS
from .losses import SideLogps
from .prefix_sharing import tree_attention_mask

DEFAULT_CHUNK_SIZE = 1024


def _chunk_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32 for the log-softmax
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_token_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                        chunk_size: int = DEFAULT_CHUNK_SIZE, chunks: Optional[int] = None) -> torch.Tensor:
    """log p(target | hidden) for N hidden states [N, H]; at most chunk_size x vocab logits live at once.

    `chunks` fixes the number of LM-head calls (some may be empty); it must give chunks of at most chunk_size."""
    from torch.utils.checkpoint import checkpoint

    track = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    chunks = chunks if chunks is not None else max(1, math.ceil(hidden.shape[0] / chunk_size))
    if hidden.shape[0] > chunks * chunk_size:
        raise ValueError(f"{hidden.shape[0]} scored positions do not fit {chunks} chunks of {chunk_size}")
    parts: List[torch.Tensor] = []
    for h, t in zip(torch.tensor_split(hidden, chunks), torch.tensor_split(targets, chunks)):
        parts.append(checkpoint(_chunk_logps, lm_head, h, t, use_reentrant=False) if track
                     else _chunk_logps(lm_head, h, t))
    return torch.cat(parts)


def _unwrap(model):
    """The PreTrainedModel under DDP / DeepSpeed / PEFT wrappers (for its LM head and config)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


# Config keys by which models transform logits after the LM head (as TRL's fused head lists them).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                    "lm_head_multiplier")


def check_plain_lm_head(model, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """Our log-probs are log_softmax(lm_head(last hidden state)); refuse models whose logits are not that."""
    inner = _unwrap(model)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    used = [k for k in LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 1, 1.0)]
    with torch.no_grad():
        expected, got = logits.float(), inner.get_output_embeddings()(hidden).float()
        tol = max(1e-3, 8 * torch.finfo(hidden.dtype).eps) * (1 + expected.abs().max().item())
        if used or (expected - got).abs().max().item() > tol:
            raise NotImplementedError(
                f"{type(inner).__name__}: logits are not lm_head(last hidden state) (logit scaling or soft-capping"
                f"{': ' + ', '.join(used) if used else ''}); the dpo stage's log-prob code does not support this model")


def final_hidden_states(model, layout: Dict[str, torch.Tensor]) -> torch.Tensor:
    """[R, T, H] inputs of the LM head. Runs through `model` itself (DDP/DeepSpeed wrappers see a forward)."""
    kwargs = {k: v for k, v in layout.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if "seq_ids" in layout:  # trees: the mask in the form this model's attention takes
        kwargs["attention_mask"] = tree_attention_mask(_unwrap(model).config, layout)
    out = model(**kwargs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]
    check_plain_lm_head(model, hidden[:, -1], out.logits[:, -1])
    return hidden


def pair_logps(model, layout: Dict[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK_SIZE
               ) -> Tuple[SideLogps, SideLogps]:
    """(chosen, rejected) segment sums of the scored response tokens under `model`, for any layout."""
    hidden = final_hidden_states(model, layout)
    flat = hidden.reshape(-1, hidden.shape[-1])[layout["score_index"]]
    budget = layout.get("score_budget")
    chunks = max(1, math.ceil(int(budget) / chunk_size)) if budget is not None else None
    head = _unwrap(model).get_output_embeddings()
    logps = chunked_token_logps(head, flat, layout["score_target"], chunk_size, chunks)
    n_pairs = layout["segment_tokens"].shape[0]
    sums = logps.new_zeros(n_pairs * SEGMENTS).index_add(0, layout["score_segment"], logps).view(n_pairs, SEGMENTS)
    return sides(sums, layout)


def sides(sums: torch.Tensor, layout: Dict[str, torch.Tensor]) -> Tuple[SideLogps, SideLogps]:
    """SideLogps for chosen and rejected from [B, 4] segment sums (a prefix scored once serves both)."""
    counts = layout["segment_tokens"]
    rejected_prefix = sums[:, 0] if int(layout["prefix_shared"]) else sums[:, 2]
    return (SideLogps(sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1]),
            SideLogps(rejected_prefix, sums[:, 3], counts[:, 2], counts[:, 3]))


@torch.no_grad()
def segment_sums_table(model, batches, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Dict[int, List[float]]:
    """{pair_index: [chosen prefix, chosen suffix, rejected prefix, rejected suffix]} over layouts (reference cache)."""
    out: Dict[int, List[float]] = {}
    for layout in batches:
        chosen, rejected = pair_logps(model, layout, chunk_size)
        values = torch.stack([chosen.prefix, chosen.suffix, rejected.prefix, rejected.suffix], 1).float().cpu()
        for i, row in zip(layout["pair_index"].tolist(), values.tolist()):
            out[i] = row
    return out
