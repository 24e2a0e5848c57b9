"""A short GPU smoke test to run on a GPU box (not in CI): `python launchers/gpu_smoke.py [--runs-dir runs/gpu-smoke]`.

Runs the toy DAG's training stages a few steps each in the GPU configurations CPU CI cannot exercise and
prints one PASS/FAIL line per check: bf16 + flash-attention-2 SFT, DDP on two GPUs, ZeRO-3 DPO on two GPUs
(weights gathered on save and reloaded), bf16 eval; and the DPO attention paths no CPU run can check:
FlexAttention's backward on packed prefix-shared trees (loss and every gradient against sdpa on padded rows,
fp32), the DPO stage trained with flex_attention, and flash-attention-2's varlen path on packed pairs (log-probs
against sdpa, bf16). Until this has passed on a GPU, those paths are unverified (README: Performance). Each
pipeline check is its own experiment, so nothing is cached.
"""

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = ["stages.mcts.num_problems=8", "stages.sft.training.max_steps=4", "stages.dpo.training.max_steps=4",
         "stages.sft.training.save_steps=0", "stages.dpo.training.save_steps=0"]


def checks(gpus: int):
    flash = importlib.util.find_spec("flash_attn") is not None
    yield "bf16 + flash-attention-2 SFT (1 GPU)", flash, "flash-attn not installed", [
        "stages.sft.nproc_per_node=1", "stages.sft.training.precision=bf16",
        "stages.sft.model.attn_implementation=flash_attention_2", "--until", "sft"]
    yield "bf16 SFT + DPO under DDP (2 GPUs)", gpus >= 2, "needs 2 GPUs", [
        "stages.sft.nproc_per_node=2", "stages.dpo.nproc_per_node=2", "stages.sft.training.precision=bf16",
        "stages.dpo.training.precision=bf16", "--until", "dpo"]
    yield "ZeRO-3 SFT + DPO, full weights saved (2 GPUs)", gpus >= 2, "needs 2 GPUs", [
        "stages.sft.nproc_per_node=2", "stages.dpo.nproc_per_node=2",
        "stages.sft.training.deepspeed=configs/deepspeed/zero3.json",
        "stages.dpo.training.deepspeed=configs/deepspeed/zero3.json", "--until", "dpo"]
    yield "bf16 eval of the DPO model", True, "", ["stages.eval_dpo.model.dtype=bf16",
                                                   "stages.eval_dpo.num_problems=32", "--until", "eval_dpo"]
    yield "DPO stage on flex_attention: packed prefix-shared trees (1 GPU)", True, "", [
        "stages.dpo.nproc_per_node=1", "stages.dpo.model.attn_implementation=flex_attention", "--until", "dpo"]


def tiny_pairs(n: int = 6, vocab: int = 400):
    import torch

    g = torch.Generator().manual_seed(0)
    draw = lambda k: torch.randint(3, vocab, (k,), generator=g).tolist()  # noqa: E731
    return [{"pair_index": i, "prompt_ids": draw(9 + i), "prefix_ids": draw(40 * (i % 3)), "chosen_ids": draw(5 + i)
             + [2], "rejected_ids": [1] + draw(7 + 2 * i) + [2]} for i in range(n)]


def segment_grads(attn: str, dtype, shared: bool, packed: bool):
    """Loss-like sum of every segment log-prob and its gradients, for a tiny random Qwen2 on the GPU."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from marco_train.train.dpo_data import PairCollator
    from marco_train.train.logprobs import pair_logps

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, attn_implementation=attn)
    model = Qwen2ForCausalLM(config).to("cuda", dtype).train()
    layout = {k: v.cuda() for k, v in PairCollator(0, shared, packed=packed)(tiny_pairs()).items()}
    chosen, rejected = pair_logps(model, layout)
    values = torch.stack([chosen.prefix, chosen.suffix, rejected.prefix, rejected.suffix], 1)
    (values * torch.linspace(0.5, 1.5, values.numel(), device="cuda").view_as(values)).sum().backward()
    return values.detach().float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}


def flex_backward_check():
    import torch

    got, grads = segment_grads("flex_attention", torch.float32, shared=True, packed=True)
    want, want_grads = segment_grads("sdpa", torch.float32, shared=False, packed=False)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()
    for name, g in want_grads.items():
        assert (grads[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


def flash_packed_check():
    import torch

    got, _ = segment_grads("flash_attention_2", torch.bfloat16, shared=False, packed=True)
    want, _ = segment_grads("sdpa", torch.bfloat16, shared=False, packed=False)
    assert torch.allclose(got, want, rtol=2e-2, atol=0.5), (got - want).abs().max()  # bf16 sums


def function_checks(gpus: int):
    flash = importlib.util.find_spec("flash_attn") is not None
    yield "FlexAttention backward: packed prefix-shared loss and gradients == sdpa padded (fp32)", gpus >= 1, \
        "needs a GPU", flex_backward_check
    yield "flash-attention-2 varlen: packed pairs' log-probs == sdpa padded (bf16)", gpus >= 1 and flash, \
        "needs a GPU and flash-attn", flash_packed_check


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/gpu-smoke")
    args = p.parse_args()
    gpus = torch.cuda.device_count()
    print(f"gpu-smoke: {gpus} CUDA device(s), torch {torch.__version__}")
    failed = 0
    for name, possible, why_not, check in function_checks(gpus):
        if not possible:
            print(f"SKIP  {name}: {why_not}")
            continue
        try:
            check()
            print(f"PASS  {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, the other checks still run
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
    for i, (name, possible, why_not, extra) in enumerate(checks(gpus)):
        if not possible:
            print(f"SKIP  {name}: {why_not}")
            continue
        cmd = [sys.executable, "launchers/pipeline.py", "--config", "configs/demo.yaml", f"runs_dir={args.runs_dir}",
               f"experiment=check{i}", *TRAIN, *extra]
        started = time.time()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        ok = proc.returncode == 0
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name} ({time.time() - started:.0f} s)")
        if not ok:
            print("      " + "\n      ".join((proc.stderr or proc.stdout).strip().splitlines()[-15:]))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
