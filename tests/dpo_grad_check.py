"""One DPO step of the dpo stage's trainer under torchrun; rank 0 writes the step's loss and every gradient.

`torchrun --nproc_per_node=N tests/dpo_grad_check.py --out DIR [--deepspeed CONFIG] RUN...` with RUN =
name:layout:budget[:gc], layout = packed_shared | packed | shared | unshared (padded layouts take 2 pairs per
micro-batch). Each run: the same tiny random Qwen2 (saved, then loaded with load_model after the training
arguments, as the stage does, so ZeRO-3 partitions it at load), 12 toy pairs with their reference log-probs, a
global batch of 8, SGD without clipping; the gradient of the first step is read where the optimizer would take it
(DDP: synced, before optimizer.step; ZeRO-3: gathered with safe_get_full_grad right before the engine's step).
DIR/<name>.safetensors gets the gradients, DIR/<name>.json the logged loss and the world size.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from dpo_testlib import dpo_trainer, examples_with_reference, save_model, tiny_model  # tests/ on PYTHONPATH
from marco_train.models import load_model, load_tokenizer
from marco_train.train.common import _init_deepspeed

LAYOUTS = {"packed_shared": (True, True), "packed": (False, True), "shared": (True, False), "unshared": (False, False)}
CAPTURED = {}


class GradCapture(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if "grads" not in CAPTURED:  # DDP / one rank: gradients synced and not yet applied
            CAPTURED["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def capture_deepspeed_gradients():
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_grad

    original = DeepSpeedEngine.step

    def step(self, *args, **kwargs):
        if self.is_gradient_accumulation_boundary() and "grads" not in CAPTURED:
            CAPTURED["grads"] = {n: safe_get_full_grad(p).detach().clone() for n, p in self.module.named_parameters()}
        return original(self, *args, **kwargs)

    DeepSpeedEngine.step = step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--deepspeed")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out, rank = Path(args.out), int(os.environ.get("RANK", "0"))
    tokenizer = load_tokenizer("marco_train/toy/checkpoint")
    start = tiny_model(tokenizer, seed=2)
    model_dir = save_model(start, tokenizer, out / f"start-{rank}")  # each rank its own copy: no barrier needed
    examples = examples_with_reference(tokenizer, args.pairs, seed=2, model=start)
    if args.deepspeed:
        _init_deepspeed()
        capture_deepspeed_gradients()
    for run in args.runs:
        name, layout, budget, *flags = run.split(":")
        shared, packed = LAYOUTS[layout]
        CAPTURED.clear()
        extra = {"deepspeed": args.deepspeed} if args.deepspeed else {"ddp_backend": "gloo"}
        trainer = dpo_trainer(None, examples, out / f"trainer-{name}", tokenizer.pad_token_id, shared=shared,
                              packed=packed, budget=int(budget), pairs=2, activation_checkpointing="gc" in flags,
                              steps=args.steps,
                              load=lambda: load_model(model_dir, dtype="fp32", attn_implementation="sdpa"),
                              **extra)
        trainer.add_callback(GradCapture())
        trainer.train()
        logged = [h for h in trainer.state.log_history if "loss" in h]
        if rank == 0:
            save_file({n: g.contiguous() for n, g in CAPTURED["grads"].items()}, str(out / f"{name}.safetensors"))
            micro = [len(r) for r in trainer.steps.plan(0)[1]]  # micro-batches per rank in the first step
            (out / f"{name}.json").write_text(json.dumps({
                "loss": logged[0]["loss"], "logged": logged, "world_size": trainer.args.world_size,
                "micro_batches": micro,
                "zero3": trainer.is_deepspeed_enabled, "checkpointing": trainer.model.is_activation_checkpointing}))


if __name__ == "__main__":
    main()
