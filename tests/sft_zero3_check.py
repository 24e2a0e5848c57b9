"""Run the sft stage under torchrun with a DeepSpeed config, then compare the saved model with the in-memory one.

`torchrun --nproc_per_node=2 tests/sft_zero3_check.py --config C --result R.json [key=value ...]`: runs the
pipeline's sft instance through the normal runner (`execute_stage`), keeps a reference to the trainer it
saved, gathers the ZeRO-3-partitioned parameters on every rank, and on rank 0 reloads <sft dir>/model with
`from_pretrained` and writes the largest absolute difference per parameter to R.json.
"""

import argparse
import json

import torch

import marco_train.train.common as common
from marco_train import dist
from marco_train.pipeline import build_plan, execute_stage

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--result", required=True)
parser.add_argument("overrides", nargs="*")
args = parser.parse_args()

saved = {}
original_save_final = common.save_final


def save_final_and_keep_trainer(trainer, *a, **kw):
    saved["trainer"] = trainer
    saved["dir"] = original_save_final(trainer, *a, **kw)
    return saved["dir"]


common.save_final = save_final_and_keep_trainer  # the stage still saves through the real save_final
plan = build_plan(args.config, args.overrides)
execute_stage(plan, plan.instance_of("sft", None), force=True)

import deepspeed  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

model = saved["trainer"].model
params = dict(model.named_parameters())
zero3 = all(hasattr(p, "ds_id") for p in params.values())
with deepspeed.zero.GatheredParameters(list(params.values())):
    in_memory = {n: p.detach().clone() for n, p in params.items()}
if dist.is_main():
    reloaded = dict(AutoModelForCausalLM.from_pretrained(saved["dir"], dtype=torch.float32).named_parameters())
    diffs = {n: (reloaded[n] - t).abs().max().item() if reloaded[n].shape == t.shape else float("inf")
             for n, t in in_memory.items()}
    with open(args.result, "w") as f:
        json.dump({"zero3_partitioned": zero3, "world_size": dist.world_size(), "max_abs_diff": diffs,
                   "numel": sum(t.numel() for t in in_memory.values())}, f)
dist.barrier()
