"""Pre-training the toy world's tiny Qwen2-shaped model from random weights (the bootstrap stage's `retrain`).

The tokenizer is rebuilt from the training problems and tagged toy traces; the model trains on an endless
synthetic stream of traces (loss on the response only), deterministic from the seed. This is a toy from
random weights, so a 40-line loop is used rather than Trainer; the fine-tuning stages run on the HF Trainer.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ..engines.hf_engine import HFEngine
from ..eval.generate import sample
from ..eval.metrics import score_samples, summarize
from ..models import load_model, load_tokenizer
from ..prompts import prompt_ids, response_ids
from ..tasks import get_task, load_problems_file
from . import RECORD_FILE
from .tokenizer import build_tokenizer


def build_model(cfg, tokenizer) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         intermediate_size=cfg.intermediate_size, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    return Qwen2ForCausalLM(config)


def heldout_eval(model, tokenizer, problems, max_new_tokens: int) -> dict:
    """Greedy held-out accuracy, exactly as the eval stage measures it (same engine, same prompts)."""
    task = get_task("toy")
    gens = sample(HFEngine(model, tokenizer, max_batch_rows=64), task, problems, 1, max_new_tokens, 1.0, seed=0)
    return summarize(score_samples(task, problems, gens))


def pretrain(cfg, seed: int, out: Path, ctx) -> dict:
    """Train for cfg.steps (a bootstrap stage config) and save model + tokenizer to `out`; with
    cfg.snapshot_every, also evaluate held-out and save <out>/../snapshots/step-N every N steps."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    task = get_task("toy")
    problems = load_problems_file(cfg.train_problems)
    corpus_rng = random.Random(seed + 1)
    traces = [task.write_trace(p.question, corpus_rng, cfg.error_rate) for p in problems]
    tokenizer = build_tokenizer([p.question for p in problems] + traces, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    ctx.log(f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter model for {cfg.steps} steps")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    # Constant after warm-up, so the model after N steps is the same whatever `steps` is (snapshots are exact).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    model.train()
    started = time.time()
    for step in range(1, cfg.steps + 1):
        rows, labels = [], []
        for p in rng.sample(problems, cfg.batch_size):
            prompt = prompt_ids(tokenizer, task, p.question)
            response = response_ids(tokenizer, task.write_trace(p.question, rng, cfg.error_rate))
            rows.append(prompt + response)
            labels.append([-100] * len(prompt) + response)  # loss on the response only
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.log_every == 0 or step == cfg.steps:
            ctx.tracker.log({"train/loss": loss.item(), "train/lr": sched.get_last_lr()[0]}, step)
        if step % 100 == 0:
            ctx.log(f"step {step}/{cfg.steps} loss {loss.item():.4f} ({(time.time() - started) / step:.2f} s/step)")
        if cfg.snapshot_every and step % cfg.snapshot_every == 0 and step < cfg.steps:
            model.eval()
            metrics = heldout_eval(model, tokenizer, load_problems_file(cfg.heldout_problems, cfg.eval_problems),
                                   cfg.max_new_tokens)
            ctx.tracker.log({f"heldout/{k}": v for k, v in metrics.items()}, step)
            snapshot = out.parent / "snapshots" / f"step-{step}"
            model.save_pretrained(snapshot)
            tokenizer.save_pretrained(snapshot)
            (snapshot / RECORD_FILE).write_text(json.dumps({"steps": step, "seed": seed, **metrics}, indent=2) + "\n")
            ctx.log(f"step {step}: held-out accuracy {metrics['accuracy']:.1%} "
                    f"no-answer {metrics['no_answer_rate']:.1%}")
            model.train()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"steps": cfg.steps, "seconds": round(time.time() - started, 1)}


def retrain(cfg, seed: int, out: Path, ctx) -> dict:
    """pretrain, then reload the saved model, measure it on the held-out problems and write <out>/record.json."""
    info = pretrain(cfg, seed, out, ctx)
    model, tokenizer = load_model(out), load_tokenizer(out, padding_side="left")
    heldout = load_problems_file(cfg.heldout_problems, limit=cfg.eval_problems)
    with torch.no_grad():
        metrics = heldout_eval(model, tokenizer, heldout, cfg.max_new_tokens)
    record = {**info, "seed": seed, "heldout_problems": len(heldout), **metrics}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
