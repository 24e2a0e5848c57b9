"""Atomic writes, line-numbered JSONL reading and content hashing: the file plumbing every stage shares."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Sequence


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append whole lines and fsync; a crash can leave at most one torn last line, which readers repair."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not lines:
        return
    with open(path, "a") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def text_lines(path: str | os.PathLike, drop_torn_tail: bool = False) -> List[str]:
    """The lines of a UTF-8 text file (newlines kept); a byte that is not UTF-8 is a DataError naming file:line.
    drop_torn_tail: leave out a last line without a newline (what a killed appender leaves)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read().splitlines(keepends=True)
    if drop_torn_tail and raw and not raw[-1].endswith((b"\n", b"\r")):
        raw.pop()
    lines = []
    for lineno, line in enumerate(raw, 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {line[e.start]:#04x} at column {e.start + 1}); "
                            f"re-save the file as UTF-8") from None
    return lines


def iter_jsonl(path: str | os.PathLike, required: Iterable[str] = (), allow_torn_tail: bool = False,
               what: str = "a JSON object") -> Iterator[tuple[str, dict]]:
    """Yield ("file:line", dict) from a JSONL file; errors name file:line and the missing field.

    allow_torn_tail: a last line without a newline is what a killed appender leaves; skip it instead of failing.
    """
    path = Path(path)
    required = tuple(required)
    for lineno, line in enumerate(text_lines(path, drop_torn_tail=allow_torn_tail), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        yield where, check_record(where, record, required, what)


def check_record(where: str, record: Any, required: Sequence[str] = (), what: str = "a JSON object",
                 has: str = "required") -> dict:
    """`record` itself if it is a dict with every required field; else a DataError naming `where` and the field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected {what}, got {type(record).__name__}")
    for name in required:
        if name not in record:
            raise DataError(f"{where}: missing field '{name}' ({has}: {', '.join(required)})")
    return record


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (), allow_torn_tail: bool = False) -> Iterator[dict]:
    """The records of a JSONL file (see iter_jsonl)."""
    for _, record in iter_jsonl(path, required, allow_torn_tail):
        yield record


def repair_jsonl_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (no trailing newline) left by a kill; returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


class HashCache:
    """Content hashes (and other facts derived from a file's bytes) reused while the file's inode, size, mtime_ns
    and ctime_ns are unchanged, so a 16 GB checkpoint is not re-read on every plan. Stored as JSON at `path`
    (the pipeline uses <runs_dir>/_cache/content_hashes.json); None keeps it in memory only.

    Trusted: that a file's bytes do not change without one of those four changing. The kernel sets ctime on
    every write and nothing can set it back, so this holds on local and NFS file systems; a file modified
    within RACY_SECONDS of being hashed is not stored (a coarse clock could give the next write the same times).
    """

    RACY_SECONDS = 2.0

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.entries: dict = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is only a slower plan

    @staticmethod
    def _stamp(st: os.stat_result) -> list:
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def get(self, kind: str, file: Path, st: os.stat_result) -> Any:
        entry = self.entries.get(f"{kind}:{file}")
        return entry["value"] if entry and entry.get("stat") == self._stamp(st) else None

    def put(self, kind: str, file: Path, st: os.stat_result, value: Any) -> None:
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < self.RACY_SECONDS * 1e9:
            return
        self.entries[f"{kind}:{file}"] = {"stat": self._stamp(st), "value": value}
        self.dirty = True

    def save(self) -> None:
        if self.path and self.dirty:
            try:
                atomic_write_json(self.path, self.entries)
                self.dirty = False
            except OSError:
                pass  # read-only runs dir: the next plan re-hashes


def _file_sha256(path: Path, cache: "HashCache | None") -> str:
    st = path.stat()
    known = cache.get("sha256", path, st) if cache else None
    if known:
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if cache:
        cache.put("sha256", path, st, h.hexdigest())
    return h.hexdigest()


def hash_path(path: str | os.PathLike, cache: "HashCache | None" = None) -> str:
    """sha256 of a file's bytes; of a directory: of its files' relative paths and sha256s (sorted; hidden files
    and directories skipped). `cache` reuses the per-file sha256s of unchanged files (see HashCache)."""
    path = Path(path).resolve()
    if path.is_file():
        return _file_sha256(path, cache)
    h = hashlib.sha256()
    for p in sorted(p for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        h.update(f"{p.relative_to(path)}\0{_file_sha256(p, cache)}\0".encode())
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
