"""Plain batched generation with transformers (greedy or sampled), left-padded, stopping at end of turn: the
reference the engines are tested against. Returns the engines' Completion (text, token ids, finish reason)."""

from __future__ import annotations

from typing import List

from marco_train.engines.base import Completion


def generate(model, tokenizer, prompts: List[List[int]], max_new_tokens: int, batch_size: int = 32,
             do_sample: bool = False, temperature: float = 1.0, progress=None) -> List[Completion]:
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    out: List[Completion] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, temperature=temperature if do_sample else None,
                                 top_p=None, top_k=None, eos_token_id=eos, pad_token_id=pad)
        for row in gen[:, width:].tolist():
            ended = eos in row
            row = row[:row.index(eos)] if ended else [t for t in row if t != pad]
            text = tokenizer.decode(row, skip_special_tokens=True)
            out.append(Completion(text, row, [], [], [], "eos" if ended else "length"))
        if progress is not None:
            progress.update(len(batch))
    return out
