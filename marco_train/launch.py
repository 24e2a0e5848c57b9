"""The processes around a stage run: the lock on its directory and the torchrun launch of a multi-rank stage."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from .config import ConfigError, StageError
from .fingerprint import PLANNED_ENV

LOCK_FILE = ".lock"
LOCK_ENV = "MARCO_LOCK_HELD"  # the stage directory a parent runner locked (and planned) for this process


class StageLock:
    """An flock on <stage dir>/.lock: a second runner on the same stage fails at once; a kill releases it."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_FILE
        self.fd: Optional[int] = None

    def __enter__(self):
        if os.environ.get(LOCK_ENV) == str(self.path.parent.resolve()):
            return self  # our parent runner holds it and launched us under torchrun
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            raise StageError(f"{self.path.parent}: another run (pid {holder or '?'}) is working in this stage "
                             f"directory; wait for it or stop it") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def stage_command(plan, s, force: bool = False) -> List[str]:
    """`torchrun ... -m marco_train stage` for stage instance `s` of pipeline plan `plan` (never a file path, so it
    runs the same from a clone and from an installed wheel)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={s.cfg.nproc_per_node}",
            "-m", "marco_train", "stage", "--config", plan.config_file, "--stage", s.name,
            *(["--force"] if force else []), *plan.overrides]


def run_subprocess(plan, s, force: bool = False) -> None:
    """Run a stage under torchrun in its own process group; if this runner dies, the group dies with it."""
    if s.cfg.nnodes != 1:
        raise ConfigError(f"stage '{s.name}': nnodes={s.cfg.nnodes}: start multi-node stages on every node with "
                          f"`torchrun --nnodes ... -m marco_train stage --config {plan.config_file} --stage {s.name}`")

    def die_with_parent():
        os.setpgrp()
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    planned = {name: plan.stages[name].fingerprint for name in plan.upstream(s.name) if name != s.name}
    env = dict(os.environ, **{LOCK_ENV: str(s.out_dir.resolve()), PLANNED_ENV: json.dumps(planned)})
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several ranks, without its banner about it
    proc = subprocess.Popen(stage_command(plan, s, force), env=env, preexec_fn=die_with_parent)
    try:
        code = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if code != 0:
        raise StageError(f"stage '{s.name}' failed under torchrun (exit code {code}); see its output above")
