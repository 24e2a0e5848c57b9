"""Rank/world helpers: nccl on CUDA, gloo on CPU, one in-process rank when not under torchrun.

A lost rank: every rank of a multi-rank job bumps a heartbeat key in the job's store (torchrun's, on the node
hosting the rendezvous) each second. When a collective fails (a peer's sockets closed) or times out (the
stage's `dist_timeout_s`; torch's default is 30 min), `failure_message` looks at the heartbeats and names the
ranks that stopped, with their host and pid, so the surviving node exits with one line instead of hanging.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import List, Optional, Tuple

HEARTBEAT_KEY = "marco_train/heartbeat/{rank}"
HEARTBEAT_SECONDS = 1.0
LOST_AFTER_SECONDS = 5.0  # a heartbeat that did not move for this long is a lost rank
_state = {"heartbeat": False, "timeout_s": None}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(timeout_s: Optional[float] = None) -> None:
    """Join the torchrun process group once (no-op for a single in-process rank). timeout_s: how long a
    collective waits for the other ranks before failing (None: torch's default, 30 min)."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    options = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", **options)
    else:
        dist.init_process_group("gloo", **options)
    _state["timeout_s"] = timeout_s
    _start_heartbeat()


def _store(timeout_s: float):
    """A client of the job's store (torchrun's agent store: MASTER_ADDR:MASTER_PORT)."""
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def _start_heartbeat() -> None:
    try:
        store = _store(30)
    except Exception:  # not torchrun's env:// store: no heartbeats, failures are reported as they come
        return
    key, who = HEARTBEAT_KEY.format(rank=rank()), f"{socket.gethostname()} pid {os.getpid()}"
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            try:
                store.set(key, f"{count} {who}")
            except Exception:  # the store's host is gone: failure_message says so
                return
            stop.wait(HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name="marco-heartbeat", daemon=True)
    thread.start()
    _state.update(heartbeat=True, stop=stop, thread=thread)


def shutdown() -> None:
    """The end of a rank's finished work: the heartbeat stops (joined), then the process group is destroyed. Left
    to the interpreter's exit, a C++ thread still running in gloo or in the store client could abort the process
    after its work was done ("terminate called without an active exception", exit -6: seen under load)."""
    import torch.distributed as dist

    if _state.get("stop") is not None:
        _state["stop"].set()
        _state["thread"].join(timeout=HEARTBEAT_SECONDS + 30)  # a store.set in flight ends by its own timeout
        _state.update(heartbeat=False, stop=None, thread=None)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def lost_ranks() -> Optional[List[Tuple[int, str]]]:
    """[(rank, "host pid N")] of the other ranks whose heartbeat stopped; None if the store is unreachable."""
    try:
        store = _store(10)
        keys = [HEARTBEAT_KEY.format(rank=r) for r in range(world_size())]

        def read():
            return [store.get(k).decode() if store.check([k]) else "" for k in keys]

        before = read()
        time.sleep(LOST_AFTER_SECONDS)
        after = read()
    except Exception:
        return None
    return [(r, after[r].split(" ", 1)[1] if after[r] else "no heartbeat ever")
            for r in range(world_size()) if r != rank() and before[r] == after[r]]


def failure_message(error: BaseException) -> Optional[str]:
    """One line for an error of a multi-rank job whose cause is a lost rank (named) or a lost store; None when
    every rank is alive (the error is then reported as it is)."""
    if not _state["heartbeat"]:
        return None
    what = " ".join(str(error).split())[:200]
    lost = lost_ranks()
    if lost is None:
        return (f"rank {rank()} of {world_size()}: lost the job's store at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} (the node hosting the rendezvous died or is unreachable) after: "
                f"{what}; restart the job on every node (finished work and checkpoints are kept)")
    if not lost:
        return None
    names = ", ".join(f"rank {r} ({who})" for r, who in lost)
    return (f"rank {rank()} of {world_size()}: lost {names}: its heartbeat stopped (its process or node died or "
            f"hangs) and the collective waiting for it failed ({what}); restart the stage on every node (finished "
            f"work and checkpoints are kept)")


def my_share(items: list) -> list:
    """This rank's part of a list: every world_size-th item from its rank (all_gather_object brings them back)."""
    return items[rank()::world_size()]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def main_first():
    """Rank 0 does the block first (e.g. writes a cache), the others follow after a barrier."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def device():
    import torch

    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


def log(msg: str) -> None:
    """One of our lines (rank 0 only; marco_train/logs.py: levels, timestamps, --quiet / --verbose)."""
    if is_main():
        from . import logs

        logs.info(msg)


def warn(msg: str) -> None:
    """A warning, on whichever rank has it (the other ranks' lines are marked with their rank)."""
    from . import logs

    logs.warning(msg)
