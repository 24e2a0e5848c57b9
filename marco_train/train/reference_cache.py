"""The dpo stage's cached reference: the reference model's log-prob segment sums, computed once and kept on disk.

<cache dir>/<key>.safetensors, key = content hash of the reference weights (a hub name: pinned to its cached
revision) + dtype + attention + the tokenized pairs + the hash of the code that computes the values (this
module's import closure: the log-prob, prefix-sharing and collation code, and the torch/transformers versions;
code_hash.py), so ablation variants with other β/ε/α share one file and an edit to that code never serves old
values. The pairs are sharded over ranks; rank 0 writes the table to a temporary file and renames it (a kill
leaves no torn cache).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import dist
from ..code_hash import CodeIndex, code_digest
from ..fingerprint import hash_cache, input_identity
from ..io import hash_json
from ..models import load_model, resolve_attention, resolve_dtype
from .dpo_batching import first_fit_decreasing
from .dpo_data import PairCollator
from .dpo_trainer import layout_choice
from .logprobs import segment_sums_table
from .prefix_sharing import default_micro_tokens


def reference_cache_path(ctx, ref_path: str, examples) -> Path:
    cfg, hashes = ctx.cfg, hash_cache(ctx.root.runs_dir)
    tokens = hash_json([[e["prompt_ids"], e["prefix_ids"], e["chosen_ids"], e["rejected_ids"]] for e in examples])
    key = hash_json({"model": input_identity(str(ref_path), hashes), "dtype": str(resolve_dtype(cfg.model.dtype)),
                     "attention": resolve_attention(cfg.model.attn_implementation), "pairs": tokens,
                     "code": code_digest([__name__], CodeIndex(hashes))})[:16]
    hashes.save()
    default = ctx.out_dir.parent / "_cache" / "reference_logps"
    root = Path(cfg.reference_cache_dir) if cfg.reference_cache_dir else default
    return root / f"{key}.safetensors"


def cached_reference(ctx, ref_path: str, examples) -> dict:
    """{pair_index: [4 segment sums]} from the cache, or computed (pairs sharded over ranks) and stored."""
    cfg = ctx.cfg
    path = dist.broadcast_object(reference_cache_path(ctx, ref_path, examples) if dist.is_main() else None)
    if dist.broadcast_object(path.exists()):  # rank 0 decides: every rank computes, or none does
        ctx.log(f"reference log-probs from cache {path}")
        values = load_file(str(path))["logps"]
        if values.shape[0] != len(examples):
            raise RuntimeError(f"{path}: {values.shape[0]} rows for {len(examples)} pairs; delete it and rerun")
        return {i: row for i, row in enumerate(values.tolist())}
    model = load_model(ref_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code,
                       device=dist.device()).eval()
    share, pack, why = layout_choice(ctx, model.config)
    ctx.log(f"precomputing reference log-probs for {len(examples)} pairs ({why}) -> {path}")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    collate = PairCollator(pad, share, score_prefix=True, packed=pack)
    mine, size = dist.my_share(examples), cfg.training.per_device_batch_size
    budget = cfg.micro_batch_tokens or default_micro_tokens(model.config, size, cfg.training.max_length)
    groups = (first_fit_decreasing([collate.tokens(e) for e in mine], budget) if pack else
              [range(i, min(i + size, len(mine))) for i in range(0, len(mine), size)])  # as the training steps do
    batches = ({k: v.to(dist.device()) for k, v in collate([mine[j] for j in group]).items()} for group in groups)
    table = {}
    for part in dist.all_gather_object(segment_sums_table(model, batches, cfg.logprob_chunk_size)):
        table.update(part)
    del model
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"logps": torch.tensor([table[i] for i in range(len(examples))], dtype=torch.float32)},
                  str(tmp), metadata={"reference": str(ref_path), "pairs": str(len(examples))})
        tmp.replace(path)
    dist.barrier()
    return table
