"""Experiment tracking: one W&B run per stage instance (rank 0 only) plus `metrics.jsonl` in the stage dir.

This tracker is the only owner of the W&B run: trainers are built with `report_to=[]` and forward their
logs here. The run id lives in the stage directory so a resumed stage continues the same run.
WANDB_MODE (online | offline | disabled) in the environment wins over the config.

What a run shows (README "Tracking"):
- every key under the stage kind, `sft/loss`, `dpo/rewards/chosen`, `mcts/nodes`, `eval/accuracy` (a key the
  stage already prefixed keeps its name), so the panels of a group never overlay two stages' `loss`; one name
  per value (the stage summary is not logged again under other names). metrics.jsonl keeps the stage's own names.
- run name `<stage>-<fingerprint>`, config and tags with the fingerprint and the global seed;
- tables (eval samples, results, ablation) with numeric cells, rendered trees (HTML), plots;
- the stage's outputs as an artifact *by reference* (a file:// reference, nothing uploaded; `wandb.upload_artifacts:
  true` uploads the files), and its upstream stages' artifacts as inputs, so W&B's lineage graph is the DAG.
"""

from __future__ import annotations

import glob
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import dist
from .io import atomic_write_text

RUN_ID_FILE = "wandb_run_id"
# stage kind -> (artifact type, the outputs it references, relative to the stage dir); other kinds: the whole dir
ARTIFACTS = {"bootstrap": ("model", ("model",)), "sft": ("model", ("model",)), "dpo": ("model", ("model",)),
             "mcts": ("trees", ("trees",)), "split": ("dataset", ("sft", "pairs", "export")),
             "eval": ("eval", ("samples.jsonl", "metrics.json"))}


@dataclass
class WandbConfig:
    """The pipeline's `wandb` section (config.PipelineConfig); every key is runtime-only (no re-run)."""
    project: str = "marco-train"
    entity: Optional[str] = None
    # online | offline | disabled; the WANDB_MODE environment variable wins.
    mode: str = "offline"
    upload_artifacts: bool = False  # false: stage outputs are artifacts by reference (paths); true uploads the files


def _scalar(value: Any) -> Optional[float]:
    try:
        value = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None
    return value


def key_prefix(kind: str) -> str:
    """The W&B key prefix of a stage kind (a plug-in kind `mylab.stages.filter` -> `filter`)."""
    return kind.rsplit(".", 1)[-1]


def artifact_name(experiment: str, stage: str) -> str:
    return f"{experiment}-{stage}"


def artifact_spec(kind: str, out_dir: Path) -> Tuple[str, List[Path]]:
    """(artifact type, the existing output paths) a stage's artifact references."""
    kind_type, parts = ARTIFACTS.get(kind, ("stage-output", (".",)))
    return kind_type, [Path(out_dir) / p for p in parts if (Path(out_dir) / p).exists()]


class Tracker:
    def __init__(self, out_dir: Path, *, experiment: str, name: str, kind: str, config: Dict[str, Any],
                 project: str = "marco-train", entity: Optional[str] = None, mode: str = "offline",
                 fingerprint: str = "", seed: Optional[int] = None, upload_artifacts: bool = False):
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.active = dist.is_main()
        self.run = None
        self.experiment, self.kind, self.prefix = experiment, kind, key_prefix(kind)
        self.upload_artifacts = upload_artifacts
        self.mode = os.environ.get("WANDB_MODE") or mode
        if not self.active or self.mode == "disabled":
            return
        import wandb

        id_file = self.out_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        if not id_file.exists():
            atomic_write_text(id_file, run_id + "\n")
        run_name = f"{name}-{fingerprint}" if fingerprint else name
        tags = [self.prefix] + ([f"fingerprint:{fingerprint}"] if fingerprint else []) + \
            ([f"seed:{seed}"] if seed is not None else [])
        config = {**config, "stage": name, "experiment": experiment, "fingerprint": fingerprint, "seed": seed}
        for attempt in range(12):
            try:
                self.run = wandb.init(project=project, entity=entity, group=experiment, job_type=self.prefix,
                                      name=run_name, id=run_id, resume="allow", dir=str(self.out_dir), config=config,
                                      tags=tags, mode=self.mode, settings=wandb.Settings(silent=True, console="off"))
                break
            except Exception as e:  # a killed run's W&B service may hold the id for a while: wait, then move on
                if "in use" not in str(e):
                    raise
                if attempt >= 7:
                    dist.warn(f"W&B run id {run_id} is still held by a killed process; continuing in a new run "
                              f"(same group and name)")
                    run_id = secrets.token_hex(4)
                    atomic_write_text(id_file, run_id + "\n")
                time.sleep(1.5)

    @property
    def run_id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    def key(self, name: str) -> str:
        return name if name.startswith(self.prefix + "/") else f"{self.prefix}/{name}"

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        if not self.active:
            return
        clean = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}},
                               sort_keys=True) + "\n")
        if self.run is not None:
            self.run.log({self.key(k): v for k, v in clean.items()}, step=step)

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
            self.run.summary.update({self.key(k): v for k, v in values.items()})

    def image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({self.key(key): wandb.Image(str(path))})

    def table(self, key: str, columns: List[str], rows: List[List[Any]]) -> None:
        """A W&B table; keep the cells numbers where they are numbers (W&B then sorts and plots them)."""
        if self.run is not None:
            import wandb

            self.run.log({self.key(key): wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def html(self, key: str, page: str) -> None:
        """A self-contained HTML page (e.g. a rendered tree: data/tree_html.py)."""
        if self.run is not None:
            import wandb

            self.run.log({self.key(key): wandb.Html(page, inject=False)})

    # ------------------------------------------------------------------------------------------ artifacts

    def _artifact(self, stage: str, kind: str, out_dir: Path, fingerprint: str):
        """The artifact of a stage's outputs, built the same way by the stage that makes it and by the stages that
        read it (the same name and manifest give the same digest, so W&B links them as one artifact version)."""
        import wandb

        kind_type, paths = artifact_spec(kind, out_dir)
        artifact = wandb.Artifact(artifact_name(self.experiment, stage), type=kind_type,
                                  metadata={"stage": stage, "kind": kind, "fingerprint": fingerprint,
                                            "path": str(Path(out_dir).resolve())})
        for path in paths:
            if self.upload_artifacts:
                (artifact.add_dir if path.is_dir() else artifact.add_file)(str(path), name=path.name)
            else:  # by reference: no bytes hashed or uploaded, the path is recorded
                artifact.add_reference(Path(path).resolve().as_uri(), name=path.name, checksum=False)
        return artifact

    def log_outputs(self, stage: str, kind: str, out_dir: Path, fingerprint: str) -> None:
        if self.run is not None:
            self.run.log_artifact(self._artifact(stage, kind, out_dir, fingerprint), aliases=["latest",
                                                                                              f"fp-{fingerprint}"])

    def use_inputs(self, upstream: Iterable[Tuple[str, str, Path, str]]) -> None:
        """Mark the upstream stages' artifacts (stage name, kind, dir, fingerprint) as this run's inputs."""
        if self.run is None:
            return
        for stage, kind, out_dir, fingerprint in upstream:
            artifact = self._artifact(stage, kind, out_dir, fingerprint)
            if self.mode == "offline":  # run.use_artifact refuses offline; this records the same use, kept for sync
                self.run._log_artifact(artifact, aliases=[f"fp-{fingerprint}"], is_user_created=True,
                                       use_after_commit=True)
            else:
                self.run.use_artifact(artifact, aliases=[f"fp-{fingerprint}"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def stage_tracker(plan, s) -> Tracker:
    """The W&B run of a pipeline stage instance `s` of `plan`, its upstream stages' outputs marked as its inputs."""
    from omegaconf import OmegaConf

    wandb_cfg = plan.root.wandb
    tracker = Tracker(s.out_dir, experiment=plan.root.experiment, name=s.name, kind=s.kind,
                      config=OmegaConf.to_container(s.cfg, resolve=True), project=wandb_cfg.project,
                      entity=wandb_cfg.entity, mode=wandb_cfg.mode, fingerprint=s.fingerprint, seed=plan.root.seed,
                      upload_artifacts=wandb_cfg.upload_artifacts)
    upstream = [plan.stages[name] for name in s.inputs.values()]
    tracker.use_inputs([(u.name, u.kind, u.out_dir, u.fingerprint) for u in upstream])
    return tracker


def sync_hint(experiment_dir: Path) -> Optional[str]:
    """The `wandb sync` command for an experiment's offline W&B runs, or None when there are none."""
    runs = glob.glob(str(Path(experiment_dir) / "*" / "wandb" / "offline-run-*"))
    if not runs:
        return None
    return (f"W&B ran offline ({len(runs)} run directories); upload them with: wandb sync "
            f"{Path(experiment_dir)}/*/wandb/offline-run-*")


def print_sync_hint(plan) -> None:
    """At the end of a run in offline mode: the command that uploads it."""
    if (os.environ.get("WANDB_MODE") or plan.root.wandb.mode) == "offline":
        hint = sync_hint(plan.experiment_dir)
        if hint:
            dist.log(hint)
