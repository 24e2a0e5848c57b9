"""A cheap stage for runner tests: sums a value over its upstream chain and over ranks, logs, writes one file.

Each execution appends `<name> <rank>` to $MARCO_PROBE_LOG, so tests can see exactly which stages ran.
"""

import os
from dataclasses import dataclass

from marco_train import dist
from marco_train.config import StageConfig, path_field
from marco_train.faults import fault_point

KIND = "probe_stages.probe"
INPUTS = ()


@dataclass
class Config(StageConfig):
    kind: str = KIND
    value: int = 1
    data_file: str = path_field("")


def run(ctx):
    import torch
    import torch.distributed as tdist

    if os.environ.get("MARCO_PROBE_LOG"):
        with open(os.environ["MARCO_PROBE_LOG"], "a") as f:
            f.write(f"{ctx.name} {dist.rank()}\n")
    upstream = sum(int((d / "artifact.txt").read_text()) for d in ctx.inputs.values())
    ranks = torch.tensor([dist.rank() + 1])
    if tdist.is_initialized():
        tdist.all_reduce(ranks)
    ctx.tracker.log({"probe/value": ctx.cfg.value, "probe/rank": dist.rank()}, step=1)
    fault_point(ctx.name, "mid_shard", ctx.kind)
    if dist.is_main():
        (ctx.out_dir / "artifact.txt").write_text(str(upstream + ctx.cfg.value))
    return {"total": upstream + ctx.cfg.value, "rank_sum": int(ranks.item()), "world": dist.world_size()}
