"""Read W&B's offline run files (`<stage dir>/wandb/offline-run-*/run-<id>.wandb`) as the records the library wrote.

The file is W&B's record log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
chunk a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; the chunks of one
record join into a serialized `wandb.proto.wandb_internal_pb2.Record`. wandb 0.31 ships no Python reader (its Go
core writes the file), so the tests read it here; a change of the format fails the header check with what it found.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

BLOCK = 32768


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = data[:4], struct.unpack("<H", data[4:6])[0], data[6]
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B record log {(ident, magic, version)}"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"{path}: bad checksum at byte {pos}"
        pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@dataclass
class OfflineRun:
    path: Path
    name: str = ""
    job_type: str = ""
    tags: List[str] = field(default_factory=list)
    config: Dict[str, object] = field(default_factory=dict)
    history_keys: set = field(default_factory=set)
    summary_keys: set = field(default_factory=set)
    logged: List[dict] = field(default_factory=list)  # artifacts this run made: {name, type, digest, refs}
    used: List[dict] = field(default_factory=list)  # artifacts it used (inputs)


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(run_dir: Path) -> OfflineRun:
    (path,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun(path)
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.name, run.job_type, run.tags = r.run.display_name, r.run.job_type, list(r.run.tags)
            run.config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "history":
            run.history_keys |= {_key(i) for i in r.history.item}
        elif kind == "summary":
            run.summary_keys |= {_key(u) for u in r.summary.update}
        elif kind == "artifact":
            a = r.artifact
            entry = {"name": a.name, "type": a.type, "digest": a.digest, "metadata": json.loads(a.metadata or "{}"),
                     "refs": {c.path: c.ref for c in a.manifest.contents}}
            (run.used if a.use_after_commit else run.logged).append(entry)
    return run


def stage_runs(stage_dir: Path) -> List[OfflineRun]:
    return [read_run(d) for d in sorted((Path(stage_dir) / "wandb").glob("offline-run-*"))]


def table(run: OfflineRun, key: str) -> dict:
    """The one table W&B wrote for a logged key: {"columns": [...], "data": [[...], ...]}."""
    (path,) = (run.path.parent / "files" / "media" / "table").glob(f"{key}_*.table.json")
    return json.loads(path.read_text())
