"""Experiment tracking: one W&B run per stage instance (rank 0 only) plus `metrics.jsonl` in the stage dir.

This tracker is the only owner of the W&B run: trainers are built with `report_to=[]` and forward their
logs here. The run id lives in the stage directory so a resumed stage continues the same run.
WANDB_MODE (online | offline | disabled) in the environment wins over the config.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import dist
from .io import atomic_write_text

RUN_ID_FILE = "wandb_run_id"


def _scalar(value: Any) -> Optional[float]:
    try:
        value = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None
    return value


class Tracker:
    def __init__(self, out_dir: Path, *, experiment: str, name: str, kind: str, config: Dict[str, Any],
                 project: str = "marco-train", entity: Optional[str] = None, mode: str = "offline"):
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.active = dist.is_main()
        self.run = None
        mode = os.environ.get("WANDB_MODE") or mode
        if not self.active or mode == "disabled":
            return
        import wandb

        id_file = self.out_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        if not id_file.exists():
            atomic_write_text(id_file, run_id + "\n")
        for attempt in range(12):
            try:
                self.run = wandb.init(project=project, entity=entity, group=experiment, job_type=kind, name=name,
                                      id=run_id, resume="allow", dir=str(self.out_dir), config=config, mode=mode,
                                      settings=wandb.Settings(silent=True, console="off"))
                break
            except Exception as e:  # a killed run's W&B service may hold the id for a while: wait, then move on
                if "in use" not in str(e):
                    raise
                if attempt >= 7:
                    print(f"[marco-train] W&B run id {run_id} is still held by a killed process; continuing in a new "
                          f"run (same group and name)", flush=True)
                    run_id = secrets.token_hex(4)
                    atomic_write_text(id_file, run_id + "\n")
                time.sleep(1.5)

    @property
    def run_id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        if not self.active:
            return
        clean = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}},
                               sort_keys=True) + "\n")
        if self.run is not None:
            self.run.log(clean, step=step)

    def truncate_after(self, step: int) -> None:
        """On resume from a checkpoint at `step`, drop the lines logged after it (they will be logged again)."""
        if not self.active or not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError):
                continue  # torn last line from a kill
        atomic_write_text(self.metrics_path, "".join(kept))

    def summary(self, values: Dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def table(self, key: str, columns: List[str], rows: List[List[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
