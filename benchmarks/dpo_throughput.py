"""DPO training throughput: TRL's DPOTrainer (fastest equivalent setup) vs our dpo trainer in four layouts.

    python benchmarks/dpo_throughput.py [--sources real,long,short] [--pairs 8] [--tokens 512] [--steps 8]
        [--warmup 2] [--threads 1] [--device cpu|cuda] [--attn sdpa|eager|flex_attention|flash_attention_2]

Per pair source and layout it prints tokens/s, the median ratio of TRL's step time to this one's (wall and CPU
time), computed/unique positions, peak memory and the first losses. Same ~6.8 M-parameter Qwen2-shaped model
(random weights, fp32 unless --dtype bf16), same pairs, same steps, same seed and thread count everywhere.

* Sources (benchmarks/dpo_setups.py): `real` = the 576 pairs of the demo's split at 1,024 searched problems,
  before the split's step checker (their lengths: benchmarks/data/demo_split_1024_lengths.json; mean prompt 28,
  shared prefix 28, chosen suffix 45, rejected suffix 31 tokens), in shuffled steps of --pairs; or a split
  stage directory (`--sources runs/x/split-...`: its pairs, real token ids); `long` = 64 prompt + 192 shared
  + 32 divergent per side, `short` = 64 + 16 + 32 (fixed shapes: no padding to save, so packing cannot help much).
* TRL 1.16 DPOTrainer, fastest equivalent setup: the shared prefix moved into the prompt (the masked semantics),
  reference log-probs precomputed, loss_type=["sigmoid", "sft"] (weights 1, 1), bf16 and gradient checkpointing
  off (TRL turns both on by default; on CPU they cost 8x / 3.5x). Its `padding_free` is disabled in 1.16 (it
  warns and pads), so padding is its fastest. Its dataset preparation is bypassed (the pairs are token ids
  already) and it takes the pairs in our step order; its collator, fused LM head and loss run as shipped.
* ours: marco_train.train.dpo_trainer with ε = 0, α = 1, masked prefix, summed log-probs, the reference cached;
  padded (two padded rows per pair, TRL's layout), shared (one padded tree row per pair), packed (every
  sequence of a micro-batch back to back: flash-attention's layout), packed_shared (trees back to back: the
  default on sdpa/eager/flex_attention), packed micro-batches of at most --tokens positions.
* Tokens = prompt + shared prefix + both suffixes per pair, each once ("unique"; what TRL's dataset rows hold).
  computed/unique: every position fed to any training forward (counted by a hook on the model: padding
  included; FlexAttention needs no rounding of rows to its block size, so there is none) over the measured steps;
  `epoch` repeats it from the layouts alone over every step of the whole source.
* Timing: the five trainers live in ONE process and take their steps in turn (the order rotating every step), so
  load from other programs on a shared machine hits all alike. A step = next item of the trainer's own dataloader
  (collation included) + its `training_step` (forward, loss, metrics, backward) + gradient clipping + optimizer
  and scheduler step; warm-up steps excluded. The CPU seconds per step are printed next to wall time: on a shared
  machine they move far less; compare both ratios before trusting either.
* Memory and losses: each configuration also runs alone in its own process through `Trainer.train()`; peak memory
  is CUDA max allocated on a GPU, on CPU the process's peak RSS and its growth after the models are built. On the
  fixed shapes the losses must agree to 1e-5 (there TRL's batch-token-mean SFT term equals our per-pair mean;
  with real lengths the two SFT normalisations differ, so they are not compared).
Bars (printed, not a test): packed_shared computed/unique <= 1.05; its tokens/s >= 3x TRL's on the real pairs
and >= 2x on each fixed shape. CPU ratios do not predict GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from dpo_setups import (
    IMPLS,
    REPO,
    SHAPES,
    build,
    count_positions,
    env,
    epoch_ratios,
    make_pairs,
    step_order,
    unique_tokens,
    why_not,
)

BARS = {"ratio": 1.05, "real": 3.0, "fixed": 2.0}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def source_pairs(args):
    return make_pairs(args.source, args.pairs * (args.warmup + args.steps))


def loss_recorder():
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def __init__(self):
            self.losses = []

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return LossRecorder()


def measured_unique(args, pairs) -> int:
    """Unique tokens of the measured steps (the steps' pairs in our step order)."""
    ordered = step_order(pairs, args.pairs)
    return sum(unique_tokens(p) for p in ordered[args.warmup * args.pairs:(args.warmup + args.steps) * args.pairs])


def child_alone(args) -> dict:
    """One configuration through Trainer.train(): its logged losses and its peak memory."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    pairs = source_pairs(args)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = build(args, args.impl, pairs, out_dir)
        recorder = loss_recorder()
        trainer.add_callback(recorder)
        before = rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"losses": recorder.losses, "peak_rss_mb": peak, "rss_growth_mb": peak - before,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def child_interleaved(args) -> dict:
    """The trainers in one process, stepping in turn: per implementation its step seconds, CPU seconds, losses and
    the positions its forwards were fed during the measured steps."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    impls = [i for i in IMPLS if why_not(args, i) is None]
    total = args.warmup + args.steps
    pairs = source_pairs(args)
    out = {key: {i: [] for i in impls} for key in ("times", "cpu", "losses", "fed")}
    runs = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for impl in impls:
            trainer = build(args, impl, pairs, f"{out_dir}/{impl}")
            trainer.create_optimizer_and_scheduler(num_training_steps=total)
            trainer.current_gradient_accumulation_steps = 1
            trainer.model.train()
            runs[impl] = (trainer, iter(trainer.get_train_dataloader()), count_positions(trainer.model))
        for step in range(total):
            for impl in impls[step % len(impls):] + impls[:step % len(impls)]:  # rotate who goes first
                trainer, batches, fed = runs[impl]
                fed.clear()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                loss = trainer.training_step(trainer.model, next(batches))
                torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
                trainer.optimizer.step()
                trainer.lr_scheduler.step()
                trainer.model.zero_grad(set_to_none=True)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                out["times"][impl].append(time.perf_counter() - start)
                out["cpu"][impl].append(time.process_time() - start_cpu)
                out["losses"][impl].append(loss.item())
                out["fed"][impl].append(sum(fed))
    out["unique"] = measured_unique(args, pairs)
    return {key: ({i: v[args.warmup:] for i, v in value.items()} if key in ("times", "cpu", "fed") else value)
            for key, value in out.items()}


def run_child(args, *flags) -> dict:
    cmd = [sys.executable, __file__, *flags, "--pairs", str(args.pairs), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--threads", str(args.threads), "--tokens", str(args.tokens), "--device", args.device,
           "--attn", args.attn, "--dtype", args.dtype]
    proc = subprocess.run(cmd, env=env(args.threads), capture_output=True, text=True, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{' '.join(flags)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def describe(source: str, pairs) -> str:
    if source in SHAPES:
        prompt, shared, divergent = SHAPES[source]
        return f"'{source}': prompt {prompt} + shared {shared} + {divergent} divergent tokens per side"
    mean = lambda key: statistics.mean(len(p[key]) for p in pairs)  # noqa: E731
    return (f"'{source}': {len(pairs)} pairs, mean prompt {mean('prompt_ids'):.0f}, shared prefix "
            f"{mean('prefix_ids'):.0f}, chosen suffix {mean('chosen_ids'):.0f}, rejected suffix "
            f"{mean('rejected_ids'):.0f} tokens")


def report(args, source: str, timing: dict, alone: dict) -> list:
    """Prints one source's table; returns its bar lines."""
    pairs = make_pairs(source, args.pairs * (args.warmup + args.steps))
    impls = list(timing["times"])
    tokens = timing["unique"]
    print(f"\nsource {describe(source, pairs)}; {args.pairs} pairs/step, packed micro-batches <= {args.tokens} "
          f"positions")
    for impl in IMPLS:
        if impl not in impls:
            print(f"  {impl}: not run ({why_not(args, impl)})")
    print(f"  {'implementation':<20}{'tokens/s':>9}{'vs TRL':>8}{'CPU vs TRL':>11}{'computed/unique':>16}"
          f"{'epoch':>7}{'peak MB':>9}{'growth MB':>10}  first losses")
    ratio = lambda key, impl: statistics.median(t / o for t, o in zip(timing[key]["trl"], timing[key][impl]))  # noqa
    epoch = epoch_ratios(pairs, args.pairs, args.tokens)
    for impl in impls:
        r = alone[impl]
        peak = r["cuda_peak_mb"] if r["cuda_peak_mb"] is not None else r["peak_rss_mb"]
        print(f"  {impl:<20}{tokens / sum(timing['times'][impl]):>9.0f}{ratio('times', impl):>7.2f}x"
              f"{ratio('cpu', impl):>10.2f}x{sum(timing['fed'][impl]) / tokens:>16.3f}{epoch[impl]:>7.3f}"
              f"{peak:>9.0f}{r['rss_growth_mb']:>10.0f}  {', '.join(f'{x:.6f}' for x in r['losses'][:3])}")
    bars = []
    if "ours_packed_shared" in impls:
        computed = sum(timing["fed"]["ours_packed_shared"]) / tokens
        speed = ratio("times", "ours_packed_shared")
        want = BARS["fixed"] if source in SHAPES else BARS["real"]
        bars.append(f"{source}: packed_shared computed/unique {computed:.3f} (epoch {epoch['ours_packed_shared']:.3f})"
                    f" {'<=' if max(computed, epoch['ours_packed_shared']) <= BARS['ratio'] else 'ABOVE'} "
                    f"{BARS['ratio']}; tokens/s {speed:.2f}x TRL (CPU time {ratio('cpu', 'ours_packed_shared'):.2f}x)"
                    f" {'>=' if speed >= want else 'BELOW'} {want}x")
    if source in SHAPES:
        worst = max(abs(a - b) for losses in ({i: alone[i]["losses"] for i in impls}, timing["losses"])
                    for impl in impls[1:] for a, b in zip(losses[impl], losses["trl"]))
        print(f"  max |loss - TRL loss| over all steps, both runs: {worst:.2e} ({'OK' if worst <= 1e-5 else 'ABOVE'}"
              f" 1e-5)")
    return bars


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", default="real,long,short", help=f"comma-separated: real, {', '.join(SHAPES)}, or a "
                   "split stage directory")
    p.add_argument("--pairs", type=int, default=8, help="pairs per step (the global batch, one device)")
    p.add_argument("--tokens", type=int, default=512, help="positions per packed micro-batch")
    p.add_argument("--steps", type=int, default=8, help="measured steps")
    p.add_argument("--warmup", type=int, default=2, help="steps excluded from timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every configuration (1: "
                   "stable on a machine shared with other jobs; 2 threads there spin and wait)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--attn", default="sdpa", help="attention implementation of every trainer (TRL: sdpa under "
                   "flex_attention); layouts it cannot take are skipped, saying why")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)  # child: one configuration alone
    p.add_argument("--interleaved", action="store_true", help=argparse.SUPPRESS)  # child: the timing run
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl or args.interleaved:
        print("RESULT " + json.dumps(child_interleaved(args) if args.interleaved else child_alone(args)), flush=True)
        return

    import platform

    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu}, {os.cpu_count()} CPUs visible"
    print(f"DPO throughput — {device} (load average {os.getloadavg()[0]:.1f} at start), {args.threads} torch threads, "
          f"{args.attn}, {args.dtype}; torch {torch.__version__}, transformers {transformers.__version__}, trl "
          f"{trl.__version__}, Python {platform.python_version()}\n{args.pairs} pairs/step, {args.warmup} warm-up + "
          f"{args.steps} measured steps")
    bars = []
    for source in args.sources.split(","):
        timing = run_child(args, "--interleaved", "--source", source)
        alone = {impl: run_child(args, "--impl", impl, "--source", source) for impl in timing["times"]}
        bars += report(args, source, timing, alone)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\nbars:\n  " + "\n  ".join(bars))
    print("CPU ratios do not predict GPU ones.")


if __name__ == "__main__":
    main()
