"""Our console: one `logging` setup for marco-train's own lines, the libraries' noise off, progress as lines when
stderr is not a terminal.

- `setup(verbosity)` (the commands' `--quiet` / `--verbose`; MARCO_LOG_LEVEL carries the choice to the ranks a
  runner starts under torchrun): rank 0 prints our lines to stdout as
  `2026-12-01 12:46:22 [marco-train] INFO mcts: 32 trees, ...`; the other ranks print warnings and errors only,
  marked `rank N:`. quiet: warnings and errors only; verbose: debug lines too, and the libraries left as they are.
- `quiet_libraries()` (every stage calls it before its work; not under verbose): transformers' and datasets'
  progress bars off ("Loading weights", "Writing model shards", TRL's dataset maps) and their advisory notes;
  their warnings stay on rank 0 (a weight that did not load is worth a line) and go on the other ranks (rank 0
  says the same), as do Python warnings; DeepSpeed's "Setting accelerator to CPU" line (DS_ACCELERATOR=cpu where
  there is no CUDA).
- `progress(total, desc)`: a tqdm bar on a terminal; otherwise (a SLURM log, a pipe) one line every
  PROGRESS_SECONDS and one at the end, never a carriage return. Nothing on ranks other than 0, nothing under quiet.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Optional

LOGGER = "marco_train"
LEVEL_ENV = "MARCO_LOG_LEVEL"  # quiet | normal | verbose
PROGRESS_ENV = "MARCO_PROGRESS_SECONDS"
PROGRESS_SECONDS = 30.0
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
FORMAT = "%(asctime)s [marco-train] %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_state = {"verbosity": None, "libraries": False}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _ConsoleHandler(logging.Handler):
    """Writes to the current sys.stdout (so redirect_stdout and pytest's capture see our lines); through tqdm.write
    while a bar is drawn on a terminal, so the bar is redrawn below the line instead of being cut."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stdout
            from tqdm import tqdm

            if getattr(tqdm, "_instances", None) and _isatty(stream):
                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


class _RankFilter(logging.Filter):
    """Ranks other than 0 print warnings and errors only (rank 0 says what all ranks do), marked with the rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = _rank()
        if rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not str(record.msg).startswith("rank "):
            record.msg = f"rank {rank}: {record.msg}"
        return True


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def verbosity() -> str:
    if _state["verbosity"] is None:
        setup(None)
    return _state["verbosity"]


def setup(choice: Optional[str] = None) -> logging.Logger:
    """Configure our logger once per process (again when `choice` is given). choice: quiet | normal | verbose;
    None takes MARCO_LOG_LEVEL (set by the parent runner) or normal."""
    choice = choice or os.environ.get(LEVEL_ENV) or "normal"
    if choice not in LEVELS:
        raise ValueError(f"{LEVEL_ENV}={choice!r}: use one of {', '.join(LEVELS)}")
    os.environ[LEVEL_ENV] = choice  # torchrun's ranks inherit it
    _state["verbosity"] = choice
    logger = logging.getLogger(LOGGER)
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _ConsoleHandler)]
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_RankFilter())
    logger.addHandler(handler)
    logger.setLevel(LEVELS[choice])
    logger.propagate = False
    return logger


def get() -> logging.Logger:
    if _state["verbosity"] is None:
        setup(None)
    return logging.getLogger(LOGGER)


def info(msg: str) -> None:
    get().info(msg)


def warning(msg: str) -> None:
    get().warning(msg)


def debug(msg: str) -> None:
    get().debug(msg)


def quiet() -> bool:
    return verbosity() == "quiet"


def quiet_libraries() -> None:
    """The libraries' own console output off (once per process; nothing under verbose). See the module docstring."""
    if _state["libraries"] or verbosity() == "verbose":
        return
    _state["libraries"] = True
    other_rank = _rank() != 0
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if other_rank:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it found no accelerator
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    if other_rank:
        transformers_logging.set_verbosity_error()
    if "datasets" in sys.modules:  # imported before the variables above were set
        import datasets

        datasets.disable_progress_bars()
        if other_rank:
            datasets.logging.set_verbosity_error()
    if other_rank:
        warnings.simplefilter("ignore")  # rank 0 shows the same warning


def _progress_seconds() -> float:
    try:
        return float(os.environ.get(PROGRESS_ENV, PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS


class LineProgress:
    """tqdm's interface as used here (update, set_postfix, n, close, a context manager), as log lines: one every
    `every` seconds (and the last one), `desc: n/total (pct) elapsed, rate, eta [postfix]`."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: Optional[float] = None, unit: str = "it"):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.every = _progress_seconds() if every is None else every
        self.start = self.last = time.time()
        self.initial, self.postfix, self.closed = initial, "", False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.time() - self.last >= self.every and self.n < self.total:
            self._emit()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def line(self) -> str:
        elapsed = time.time() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", eta {(self.total - self.n) / rate:.0f} s" if rate > 0 and self.n < self.total else ""
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        tail = f" [{self.postfix}]" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total}{pct} in {elapsed:.0f} s, {rate:.2f} {self.unit}/s{eta}{tail}"

    def _emit(self) -> None:
        self.last = time.time()
        info(self.line())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Silent(LineProgress):
    def _emit(self) -> None:
        self.last = time.time()


def progress_bar_wanted() -> bool:
    """A bar is drawn (rank 0, not quiet, stderr a terminal); off a terminal a caller that logs its own lines (the
    trainers' TrackerCallback) needs no progress lines besides them."""
    return _rank() == 0 and not quiet() and _isatty(sys.stderr)


def progress(total: int, desc: str, initial: int = 0, unit: str = "it"):
    """A progress display for rank 0 (see the module docstring); the other ranks get one that prints nothing."""
    if _rank() != 0 or quiet():
        return _Silent(total, desc, initial, unit=unit)
    if _isatty(sys.stderr):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, initial=initial, unit=unit, mininterval=1.0)
    return LineProgress(total, desc, initial, unit=unit)
