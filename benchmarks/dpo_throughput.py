"""DPO training throughput: TRL's DPOTrainer (fastest equivalent setup) vs our dpo trainer without / with prefix
sharing.

    python benchmarks/dpo_throughput.py [--pairs 4] [--steps 8] [--warmup 2] [--threads 1] [--shapes long,short]

One run prints, per pair shape, tokens/s, the median step time, peak memory and the ratios to TRL. Same tiny
Qwen2-shaped model (~6.8 M parameters, random weights, fp32), same random-token pairs, same batch, same seed and
thread count for all three; each configuration runs in its own process (clean peak-memory figures).

* TRL 1.16 DPOTrainer, fastest equivalent setup: the shared prefix moved into the prompt (the masked semantics),
  reference log-probs precomputed, loss_type=["sigmoid", "sft"] (weights 1, 1), bf16 and gradient checkpointing
  off (TRL turns both on by default; on CPU they cost 8x / 3.5x). Its dataset preparation is bypassed (the pairs
  are token ids already); its collator, fused LM head and loss run as shipped.
* ours: marco_train.train.dpo_trainer's Trainer with ε = 0, α = 1, masked prefix, summed log-probs — the same loss as
  TRL's there (all chosen suffixes have the same length, so TRL's batch-token-mean SFT term equals our per-pair
  mean) — the reference cached, and prefix sharing off or on.
Tokens are counted as TRL feeds them: prompt + chosen + rejected per pair.

Timing: the three trainers live in ONE process and take their steps in turn (the order rotating every step), so
load from other programs on a shared machine hits all three alike. A step = next batch from the trainer's own
dataloader (collation included) + its `training_step` (forward, loss, metrics, backward) + gradient clipping +
optimizer and scheduler step; warm-up steps excluded; the median over the measured steps. The CPU seconds per
step (all threads of the process) are printed next to it: on a machine shared with other jobs they move far less
than wall time, so compare the two ratios before trusting either.
Memory and losses: each configuration also runs alone in its own process through `Trainer.train()`; peak memory
is CUDA max allocated on a GPU, on CPU the process's peak RSS and its growth after the models are built; the
logged losses of the three runs must agree to 1e-5.
CPU ratios do not predict GPU ones (different kernels, no flash attention here).
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"long": (64, 192, 32), "short": (64, 16, 32)}  # prompt, shared prefix, divergent tokens per side
IMPLS = ("trl", "ours_unshared", "ours_shared")
MODEL = dict(vocab_size=8192, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=768, max_position_embeddings=1024, tie_word_embeddings=True)
BETA, LR = 0.1, 1e-4


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tokens_per_step(shape: str, pairs: int) -> int:
    """As TRL feeds them: prompt (+ the shared prefix moved into it) + chosen + rejected, per pair."""
    prompt, shared, divergent = SHAPES[shape]
    return pairs * (prompt + shared + 2 * divergent)


def make_pairs(shape: str, n: int, seed: int = 0):
    import torch

    prompt, shared, divergent = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    draw = lambda k: torch.randint(3, MODEL["vocab_size"], (k,), generator=g).tolist()  # noqa: E731
    pairs = []
    for i in range(n):
        chosen, rejected = draw(divergent - 1) + [2], draw(divergent - 1) + [2]  # eos = 2, as the toy tokenizer's
        rejected[0] = chosen[0] + 1 if chosen[0] + 1 < MODEL["vocab_size"] else 3  # they diverge at the first token
        pairs.append({"pair_index": i, "prompt_ids": draw(prompt), "prefix_ids": draw(shared), "chosen_ids": chosen,
                      "rejected_ids": rejected})
    return pairs


def make_model(seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**MODEL, pad_token_id=0, eos_token_id=2, attn_implementation="sdpa"))


def loss_recorder():
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def __init__(self):
            self.losses = []

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return LossRecorder()


def common_args(args, out_dir: str) -> dict:
    return dict(output_dir=out_dir, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
                learning_rate=LR, max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no",
                report_to=[], seed=0, data_seed=0, bf16=False, gradient_checkpointing=False, use_cpu=True,
                dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, lr_scheduler_type="constant")


def build_trl(args, pairs, out_dir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from marco_train.models import load_tokenizer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **k):  # the pairs are token ids already
            return dataset

    rows = [{"prompt_ids": p["prompt_ids"] + p["prefix_ids"], "chosen_ids": p["chosen_ids"],
             "rejected_ids": p["rejected_ids"]} for p in pairs]
    config = DPOConfig(**common_args(args, out_dir), beta=BETA, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
                       precompute_ref_log_probs=True, precompute_ref_batch_size=args.pairs, max_length=None)
    return PreTokenizedDPOTrainer(model=make_model(), args=config, train_dataset=Dataset.from_list(rows),
                                  processing_class=load_tokenizer(REPO / "marco_train/toy/checkpoint"))


def build_ours(args, pairs, out_dir, shared: bool):
    from datasets import Dataset
    from transformers import TrainingArguments

    from marco_train.train.dpo_data import PairCollator
    from marco_train.train.dpo_trainer import FineGrainedDPOTrainer
    from marco_train.train.logprobs import segment_sums_table
    from marco_train.train.losses import LossConfig

    model = make_model()
    collate = PairCollator(0, shared=shared, score_prefix=False)
    table = segment_sums_table(model.eval(), (PairCollator(0, shared=shared)(pairs[i:i + args.pairs])
                                              for i in range(0, len(pairs), args.pairs)))
    examples = [dict(p, ref_logps=table[p["pair_index"]]) for p in pairs]
    loss = LossConfig(beta=BETA, epsilon=0.0, alpha=1.0, mask_prefix=True, mask_sft_prefix=True, logp_reduction="sum")
    return FineGrainedDPOTrainer(model=model, args=TrainingArguments(**common_args(args, out_dir)),
                                 train_dataset=Dataset.from_list(examples), data_collator=collate, loss_config=loss)


def build(args, impl: str, pairs, out_dir):
    return build_trl(args, pairs, out_dir) if impl == "trl" else \
        build_ours(args, pairs, out_dir, shared=impl == "ours_shared")


def child_alone(args) -> dict:
    """One configuration through Trainer.train(): its logged losses and its peak memory."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.shape, args.pairs * (args.warmup + args.steps))
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
    """The three trainers in one process, stepping in turn; {impl: [step seconds]} plus their losses."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    pairs = make_pairs(args.shape, args.pairs * total)
    times, cpu, losses, runs = {i: [] for i in IMPLS}, {i: [] for i in IMPLS}, {i: [] for i in IMPLS}, {}
    with tempfile.TemporaryDirectory() as out_dir:
        for impl in IMPLS:
            trainer = build(args, impl, pairs, f"{out_dir}/{impl}")
            trainer.create_optimizer_and_scheduler(num_training_steps=total)
            trainer.current_gradient_accumulation_steps = 1
            trainer.model.train()
            runs[impl] = (trainer, iter(trainer.get_train_dataloader()))
        for step in range(total):
            for impl in IMPLS[step % 3:] + IMPLS[:step % 3]:  # rotate who goes first
                trainer, batches = runs[impl]
                start, start_cpu = time.perf_counter(), time.process_time()
                loss = trainer.training_step(trainer.model, next(batches))
                torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
                trainer.optimizer.step()
                trainer.lr_scheduler.step()
                trainer.model.zero_grad(set_to_none=True)
                times[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - start_cpu)
                losses[impl].append(loss.item())
    return {"times": {i: t[args.warmup:] for i, t in times.items()},
            "cpu": {i: t[args.warmup:] for i, t in cpu.items()}, "losses": losses}


def run_child(args, env, *flags) -> dict:
    cmd = [sys.executable, __file__, *flags, "--pairs", str(args.pairs), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{' '.join(flags)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=4, help="pairs per step (per device)")
    p.add_argument("--steps", type=int, default=8, help="measured steps")
    p.add_argument("--warmup", type=int, default=2, help="steps excluded from timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every configuration (1: "
                   "stable on a machine shared with other jobs; 2 threads there spin and wait)")
    p.add_argument("--shapes", default="long,short", help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)  # child: one configuration alone
    p.add_argument("--interleaved", action="store_true", help=argparse.SUPPRESS)  # child: the timing run
    p.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl or args.interleaved:
        print("RESULT " + json.dumps(child_interleaved(args) if args.interleaved else child_alone(args)), flush=True)
        return

    import platform

    import torch
    import transformers
    import trl

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    load = os.getloadavg()[0]
    print(f"DPO throughput — {cpu}, {os.cpu_count()} CPUs visible (load average {load:.1f} at start), "
          f"{args.threads} torch threads; torch {torch.__version__}, transformers {transformers.__version__}, trl "
          f"{trl.__version__}, Python {platform.python_version()}\n{args.pairs} pairs/step, {args.warmup} warm-up + "
          f"{args.steps} measured steps, fp32 model {MODEL}")
    for shape in args.shapes.split(","):
        timing = run_child(args, env, "--interleaved", "--shape", shape)
        alone = {impl: run_child(args, env, "--impl", impl, "--shape", shape) for impl in IMPLS}
        prompt, shared, divergent = SHAPES[shape]
        print(f"\nshape '{shape}': prompt {prompt} + shared {shared} + {divergent} divergent tokens per side "
              f"(prompt + shared prefix = {(prompt + shared) / (prompt + shared + divergent):.0%} of each sequence)")
        print(f"  {'implementation':<16}{'tokens/s':>10}{'step (s)':>10}{'vs TRL':>8}{'CPU s/step':>12}{'vs TRL':>8}"
              f"{'peak RSS MB':>13}{'growth MB':>11}  first losses")
        median = {impl: statistics.median(timing["times"][impl]) for impl in IMPLS}
        cpu = {impl: statistics.median(timing["cpu"][impl]) for impl in IMPLS}
        for impl in IMPLS:
            r = alone[impl]
            print(f"  {impl:<16}{tokens_per_step(shape, args.pairs) / median[impl]:>10.0f}{median[impl]:>10.3f}"
                  f"{median['trl'] / median[impl]:>7.2f}x{cpu[impl]:>12.3f}{cpu['trl'] / cpu[impl]:>7.2f}x"
                  f"{r['peak_rss_mb']:>13.0f}{r['rss_growth_mb']:>11.0f}"
                  f"  {', '.join(f'{x:.6f}' for x in r['losses'][:3])}")
        compared = [(runs[impl], runs["trl"]) for runs in ({i: alone[i]["losses"] for i in IMPLS}, timing["losses"])
                    for impl in IMPLS[1:]]
        worst = max(abs(a - b) for ours, theirs in compared for a, b in zip(ours, theirs))
        print(f"  max |loss - TRL loss| over all steps, both runs: {worst:.2e} ({'OK' if worst <= 1e-5 else 'ABOVE'} "
              f"1e-5)")
    print("\nCPU ratios do not predict GPU ones.")


if __name__ == "__main__":
    main()
