"""SFT training throughput: our sft stage's trainer (TRL's SFTTrainer) with packing (the default where exact: TRL's
best-fit-decreasing packing, no padding) vs without (padded batches).

    python benchmarks/sft_throughput.py [--source real|<split dir>] [--batch 8] [--packed-tokens 512] [--steps 8]
        [--warmup 2] [--threads 1]

Rows: the demo's SFT set at 1,024 searched problems (578 rows; prompt and response lengths from
benchmarks/data/demo_split_1024_lengths.json, random token ids of exactly those lengths), or a split stage
directory's `sft` set tokenized with the toy tokenizer. The same ~6.8 M-parameter Qwen2-shaped model as
benchmarks/dpo_throughput.py (random weights, fp32), the completion-only loss, built by
marco_train.train.sft_trainer.build_trainer exactly as the stage builds it. Unpacked: --batch rows per step
(max_length = the longest row); packed: TRL's packing into rows of up to --packed-tokens (max_length), one packed
row per step. TRL hands the model a packed row as one sequence with restarting position ids: flash-attention's
varlen kernels and FlexAttention skip the work across samples, sdpa and eager get a dense block-diagonal mask,
so their attention cost grows with the row length (the stage keeps it to max_length there). Tokens = the real
tokens of the rows; computed/unique = positions fed to the model / real tokens (padding included). The two
trainers take their steps in turn in one process (load on a shared machine hits both); tokens/s = real tokens
of the measured steps / their time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dpo_setups import MODEL, REPO, make_model, real_lengths


def sft_rows(source: str, tokenizer):
    """input_ids and completion_mask columns of the SFT set."""
    from datasets import Dataset

    if source == "real":
        import torch

        g = torch.Generator().manual_seed(0)
        ids, masks = [], []
        for prompt, response in real_lengths()["sft"]:
            ids.append(torch.randint(3, MODEL["vocab_size"], (prompt + response - 1,), generator=g).tolist() + [2])
            masks.append([0] * prompt + [1] * response)
        return Dataset.from_dict({"input_ids": ids, "completion_mask": masks})
    import json

    from marco_train.data.schema import load_sft
    from marco_train.tasks import get_task
    from marco_train.train.sft_trainer import tokenize_sft

    task = json.loads((Path(source) / "summary.json").read_text())["task"]
    return tokenize_sft(load_sft(Path(source) / "sft"), tokenizer, get_task(task), 4096)


def build(packing: bool, rows, tokenizer, model_dir: str, out_dir: str, args):
    from omegaconf import OmegaConf

    from marco_train.config import TrainingConfig
    from marco_train.stages import sft
    from marco_train.train.sft_trainer import build_trainer

    longest = max(len(r) for r in rows["input_ids"])
    training = TrainingConfig(global_batch_size=1 if packing else args.batch, per_device_batch_size=1 if packing else
                              args.batch, max_length=args.packed_tokens if packing else longest, learning_rate=1e-4,
                              max_steps=args.warmup + args.steps, precision="fp32", gradient_checkpointing=False)
    cfg = OmegaConf.structured(sft.Config(inputs={"data": "x", "model": "x"}, training=training,
                                          packing=None if packing else False))
    trainer = build_trainer(cfg, model_dir, rows, tokenizer, Path(out_dir), seed=0)
    assert trainer.args.packing == packing, trainer.packing_why
    return trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="real")
    p.add_argument("--batch", type=int, default=8, help="rows per unpacked step")
    p.add_argument("--packed-tokens", type=int, default=512, help="tokens per packed row (one row per step)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    from marco_train.models import load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(REPO / "marco_train/toy/checkpoint")
    rows = sft_rows(args.source, tokenizer)
    kinds = ("unpacked", "packed")
    times, real, fed = ({k: [] for k in kinds} for _ in range(3))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model()
        model.save_pretrained(f"{tmp}/model")
        tokenizer.save_pretrained(f"{tmp}/model")
        for kind in kinds:
            trainer = build(kind == "packed", rows, tokenizer, f"{tmp}/model", f"{tmp}/{kind}", args)
            trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
            trainer.current_gradient_accumulation_steps = 1
            trainer.model.train()
            runs[kind] = (trainer, iter(trainer.get_train_dataloader()))
        for step in range(args.warmup + args.steps):
            for kind in kinds[step % 2:] + kinds[:step % 2]:
                trainer, batches = runs[kind]
                batch = next(batches)
                start = time.perf_counter()
                trainer.training_step(trainer.model, batch, None)
                trainer.optimizer.step()
                trainer.model.zero_grad(set_to_none=True)
                if step >= args.warmup:
                    times[kind].append(time.perf_counter() - start)
                    mask = batch.get("attention_mask")
                    real[kind].append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
                    fed[kind].append(batch["input_ids"].numel())
    print(f"SFT throughput — {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), {args.threads} torch "
          f"threads; source {args.source}: {len(rows)} rows, mean length "
          f"{statistics.mean(len(r) for r in rows['input_ids']):.0f} tokens; {args.warmup} warm-up + {args.steps} "
          f"measured steps")
    print(f"  {'trainer':<10}{'tokens/step':>12}{'tokens/s':>10}{'computed/unique':>17}")
    speed = {k: sum(real[k]) / sum(times[k]) for k in kinds}
    for kind in kinds:
        print(f"  {kind:<10}{statistics.mean(real[kind]):>12.0f}{speed[kind]:>10.0f}"
              f"{sum(fed[kind]) / sum(real[kind]):>17.3f}")
    print(f"  packed / unpacked tokens/s: {speed['packed'] / speed['unpacked']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
