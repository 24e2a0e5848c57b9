"""The stage DAG: validate a pipeline config, fingerprint every stage instance, plan, and run.

A stage instance writes `runs/<experiment>/<name>-<fingerprint>/` and, last and atomically, `_DONE.json`.
fingerprint = hash(stage kind + its code version + its resolved config minus RUNTIME_KEYS + the global
seed + content hashes of the files its `path_field` keys name + the fingerprints of its upstream stages).
So a changed key or input byte re-runs that stage and everything downstream; runtime-only keys re-run nothing.
"""

from __future__ import annotations

import ctypes
import fcntl
import graphlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from . import dist
from .config import ConfigError, PipelineConfig, StageError, input_path_keys, load_raw, to_yaml, validate
from .faults import fault_point
from .io import atomic_write_json, atomic_write_text, hash_json, hash_path
from .stages import check_inputs, unknown_upstream

# Stage kind -> module; what a stage module defines: marco_train/stages/__init__.py.
STAGE_MODULES = {
    "bootstrap": "marco_train.stages.bootstrap",
    "mcts": "marco_train.stages.mcts",
    "split": "marco_train.stages.split",
    "sft": "marco_train.stages.sft",
    "dpo": "marco_train.stages.dpo",
    "eval": "marco_train.stages.eval",
}

# Keys that change how a stage runs but not what it produces; they stay out of the fingerprint.
# Global: experiment/runs_dir (they pick the directory), wandb.* (tracking). Per stage: these, plus a
# module's own EXTRA_RUNTIME_KEYS. World size is runtime too: the global batch is fixed across it
# (results may differ in float rounding; see README "Determinism").
RUNTIME_KEYS = ("nproc_per_node", "nnodes", "log_every", "dist_timeout_s")
DONE_FILE = "_DONE.json"
LOCK_FILE = ".lock"
LOCK_ENV = "MARCO_LOCK_HELD"


@dataclass
class StageInstance:
    name: str
    kind: str
    cfg: DictConfig
    module: Any
    inputs: Dict[str, str]
    fingerprint: str = ""
    fingerprint_inputs: Dict[str, Any] = field(default_factory=dict)
    out_dir: Path = Path()

    @property
    def done(self) -> bool:
        return (self.out_dir / DONE_FILE).exists()


@dataclass
class Plan:
    config_file: str
    overrides: List[str]
    root: DictConfig
    stages: Dict[str, StageInstance]  # topological order

    @property
    def experiment_dir(self) -> Path:
        return Path(self.root.runs_dir) / self.root.experiment

    def downstream(self, name: str) -> List[str]:
        out, frontier = [], {name}
        for s in self.stages.values():
            if set(s.inputs.values()) & frontier:
                frontier.add(s.name)
                out.append(s.name)
        return out

    def upstream(self, name: str) -> List[str]:
        need, order = {name}, []
        for s in reversed(list(self.stages.values())):
            if s.name in need:
                need.update(s.inputs.values())
                order.append(s.name)
        return list(reversed(order))

    def instance_of(self, kind: str, name: Optional[str]) -> StageInstance:
        if name:
            if name not in self.stages:
                raise ConfigError(f"{self.config_file}: no stage instance '{name}' (have: {', '.join(self.stages)})")
            return self.stages[name]
        matches = [s for s in self.stages.values() if s.kind == kind]
        if len(matches) != 1:
            names = ", ".join(s.name for s in matches) or "none"
            raise ConfigError(f"{self.config_file}: {len(matches)} stage instances of kind '{kind}' ({names}); "
                              f"pick one with --stage NAME")
        return matches[0]


def stage_module(kind: str, where: str):
    if "." in kind:  # a user's own stage module, e.g. kind: mylab.stages.filter
        try:
            return importlib.import_module(kind)
        except ModuleNotFoundError as e:
            raise ConfigError(f"{where}: stage module '{kind}' not importable ({e}); check PYTHONPATH") from None
    if kind not in STAGE_MODULES:
        raise ConfigError(f"{where}: unknown stage kind '{kind}' (known: {', '.join(STAGE_MODULES)})")
    try:
        return importlib.import_module(STAGE_MODULES[kind])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("marco_train"):
            raise ConfigError(f"{where}: stage kind '{kind}' is not implemented in this version") from None
        raise


def _drop_runtime(container: Dict[str, Any], runtime: tuple) -> Dict[str, Any]:
    return {k: v for k, v in container.items() if k not in runtime}


def _file_hash(value: str) -> str:
    """Content hash of a local file/dir; a hub name (not on disk) is identified by the name already in the config."""
    if value and Path(value).exists():
        return hash_path(value)
    return "not-a-local-path"


def build_plan(config_file: str, overrides: List[str] = ()) -> Plan:
    raw, source = load_raw(config_file, list(overrides))
    stages_raw = raw.get("stages") or {}
    root = validate(PipelineConfig, OmegaConf.masked_copy(raw, [k for k in raw if k != "stages"]), "", source,
                    label="the pipeline (top level)")
    if not stages_raw:
        raise ConfigError(f"{source.where('stages')}: the config declares no stages")
    instances: Dict[str, StageInstance] = {}
    for name, node in stages_raw.items():
        prefix = f"stages.{name}"
        kind = node.get("kind") if isinstance(node, DictConfig) else None
        if not kind:
            raise ConfigError(f"{source.where(prefix)}: stage '{name}' needs a 'kind' ({', '.join(STAGE_MODULES)})")
        module = stage_module(kind, source.where(prefix + ".kind"))
        cfg = validate(module.Config, node, prefix, source, label=f"a '{kind}' stage")
        check_inputs(module, cfg, f"stage '{name}' ({kind})", prefix, source.where)
        if hasattr(module, "check_config"):  # cross-key rules a schema cannot express; raises ConfigError
            module.check_config(cfg, prefix, source.where)
        inputs = dict(cfg.inputs)
        for input_name, upstream in inputs.items():
            if upstream not in stages_raw:
                raise ConfigError(f"{source.where(prefix + '.inputs.' + input_name)}: "
                                  f"{unknown_upstream(module, input_name, upstream)}")
        instances[name] = StageInstance(name, kind, cfg, module, inputs)
    sorter = graphlib.TopologicalSorter({n: set(s.inputs.values()) for n, s in instances.items()})
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as e:
        raise ConfigError(f"{config_file}: stage inputs form a cycle: {' -> '.join(e.args[1])}") from None
    plan = Plan(config_file, list(overrides), root, {n: instances[n] for n in order})
    for s in plan.stages.values():
        runtime = RUNTIME_KEYS + tuple(getattr(s.module, "EXTRA_RUNTIME_KEYS", ()))
        container = OmegaConf.to_container(s.cfg, resolve=True)
        s.fingerprint_inputs = {
            "kind": s.kind,
            "code_version": s.module.CODE_VERSION,
            "seed": root.seed,
            "config": _drop_runtime(container, runtime),
            "files": {k: _file_hash(OmegaConf.select(s.cfg, k) or "") for k in input_path_keys(s.module.Config)},
            "upstream": {k: plan.stages[v].fingerprint for k, v in sorted(s.inputs.items())},
        }
        s.fingerprint = hash_json(s.fingerprint_inputs)[:12]
        s.out_dir = plan.experiment_dir / f"{s.name}-{s.fingerprint}"
    return plan


def equivalent_stages(plan: Plan) -> List[List[str]]:
    """Groups of stage instances that compute the same thing: identical fingerprints, or identical after the
    stage module's optional `canonical_config(cfg dict) -> dict` (e.g. DPO variants the loss algebra makes equal)."""
    canonical: Dict[str, str] = {}
    groups: Dict[str, List[str]] = {}
    for s in plan.stages.values():
        inputs = dict(s.fingerprint_inputs)
        config = {k: v for k, v in inputs["config"].items() if k != "inputs"}  # upstream *names* don't matter here
        inputs["config"] = s.module.canonical_config(config) if hasattr(s.module, "canonical_config") else config
        inputs["upstream"] = {k: canonical[v] for k, v in sorted(s.inputs.items())}
        canonical[s.name] = hash_json(inputs)
        groups.setdefault(canonical[s.name], []).append(s.name)
    return [names for names in groups.values() if len(names) > 1]


# ----------------------------------------------------------------------------------------------- explain


def _flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _previous_run(plan: Plan, s: StageInstance) -> Optional[Path]:
    done = [p for p in plan.experiment_dir.glob(f"{s.name}-*") if p != s.out_dir and (p / DONE_FILE).exists()]
    return max(done, key=lambda p: (p / DONE_FILE).stat().st_mtime) if done else None


def why_run(plan: Plan, s: StageInstance) -> str:
    """A one-line reason this stage will run, diffing against its last finished run when there is one."""
    if s.out_dir.exists():
        return "started before but not finished: resumes" if getattr(s.module, "RESUMABLE", False) \
            else "started before but not finished: redone"
    prev = _previous_run(plan, s)
    if prev is None:
        return "never run"
    old = _flatten(json.loads((prev / DONE_FILE).read_text()).get("fingerprint_inputs", {}))
    new = _flatten(s.fingerprint_inputs)
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key.startswith("upstream."):
                changed.append(f"upstream {plan.stages[s.inputs[key.split('.', 1)[1]]].name} changed")
            elif key.startswith("files."):
                changed.append(f"content of {key[6:]} changed")
            else:
                changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "changed since " + prev.name + ": " + "; ".join(changed or ["code version"])


# ----------------------------------------------------------------------------------------------- run


@dataclass
class StageContext:
    """What a stage's run() gets: its config, its directory, its upstream directories, a tracker."""
    name: str
    kind: str
    cfg: DictConfig
    root: DictConfig
    out_dir: Path
    inputs: Dict[str, Path]
    fingerprint: str
    tracker: Any = None

    def log(self, msg: str) -> None:
        dist.log(f"{self.name}: {msg}")


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


def _clear(directory: Path, keep: tuple) -> None:
    for child in directory.iterdir():
        if child.name not in keep:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def execute_stage(plan: Plan, s: StageInstance, force: bool = False) -> Dict[str, Any]:
    """Run one stage instance here (all ranks of a torchrun job call this). Returns its summary."""
    from .tracking import Tracker

    dist.init(s.cfg.dist_timeout_s)
    for upstream in s.inputs.values():
        if not plan.stages[upstream].done:
            raise StageError(f"stage '{s.name}' needs '{upstream}' finished first: run "
                             f"`marco-train run --config {plan.config_file} --until {s.name}`")
    lock = StageLock(s.out_dir)
    if dist.is_main():
        lock.__enter__()
    try:
        if dist.is_main() and force:
            _clear(s.out_dir, keep=(LOCK_FILE,))
        done = dist.broadcast_object(dist.is_main() and (s.out_dir / DONE_FILE).exists())
        if done:
            dist.log(f"{s.name}: cached ({s.out_dir})")
            return json.loads((s.out_dir / DONE_FILE).read_text()).get("summary", {})
        if dist.is_main():
            if not getattr(s.module, "RESUMABLE", False):
                _clear(s.out_dir, keep=(LOCK_FILE, "wandb_run_id", "wandb"))  # a non-checkpointing stage is redone
            atomic_write_text(s.out_dir / "config.yaml", to_yaml(s.cfg))
        dist.barrier()
        started = time.time()
        tracker = Tracker(s.out_dir, experiment=plan.root.experiment, name=s.name, kind=s.kind,
                          config=OmegaConf.to_container(s.cfg, resolve=True), project=plan.root.wandb.project,
                          entity=plan.root.wandb.entity, mode=plan.root.wandb.mode)
        ctx = StageContext(s.name, s.kind, s.cfg, plan.root, s.out_dir,
                           {k: plan.stages[v].out_dir for k, v in s.inputs.items()}, s.fingerprint, tracker)
        dist.log(f"{s.name}: running ({s.kind}) -> {s.out_dir}")
        summary = s.module.run(ctx) or {}
        dist.barrier()
        fault_point(s.name, "before_done", s.kind)
        if dist.is_main():
            tracker.summary({k: v for k, v in _flatten(summary).items() if isinstance(v, (int, float))})
            atomic_write_json(s.out_dir / DONE_FILE, {
                "stage": s.name, "kind": s.kind, "fingerprint": s.fingerprint,
                "fingerprint_inputs": s.fingerprint_inputs, "seconds": round(time.time() - started, 2),
                "world_size": dist.world_size(), "wandb_run_id": tracker.run_id, "summary": summary})
        tracker.finish()
        dist.barrier()
        return summary
    finally:
        lock.__exit__()


def stage_command(plan: Plan, s: StageInstance, force: bool = False) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={s.cfg.nproc_per_node}",
            "-m", "marco_train", "stage", "--config", plan.config_file, "--stage", s.name,
            *(["--force"] if force else []), *plan.overrides]


def run_subprocess(plan: Plan, s: StageInstance, force: bool = False) -> None:
    """Run a stage under torchrun in its own process group; if this runner dies, the group dies with it."""
    if s.cfg.nnodes != 1:
        raise ConfigError(f"stage '{s.name}': nnodes={s.cfg.nnodes}: start multi-node stages on every node with "
                          f"`torchrun --nnodes ... -m marco_train stage --config {plan.config_file} --stage {s.name}`")

    def die_with_parent():
        os.setpgrp()
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    env = dict(os.environ, **{LOCK_ENV: str(s.out_dir.resolve())})
    proc = subprocess.Popen(stage_command(plan, s, force), env=env, preexec_fn=die_with_parent)
    try:
        code = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if code != 0:
        raise StageError(f"stage '{s.name}' failed under torchrun (exit code {code}); see its output above")


def run_plan(plan: Plan, *, start: Optional[str] = None, until: Optional[str] = None, force: List[str] = (),
             dry_run: bool = False) -> Dict[str, Dict[str, Any]]:
    """Run (or explain) the plan; returns {stage name: summary} for the stages in scope."""
    for name in [start, until, *force]:
        if name and name not in plan.stages:
            raise ConfigError(f"{plan.config_file}: no stage '{name}' (have: {', '.join(plan.stages)})")
    scope = plan.upstream(until) if until else list(plan.stages)
    forced = set(force)
    if start:
        forced |= {start, *plan.downstream(start)}
    results: Dict[str, Dict[str, Any]] = {}
    for name in scope:
        s = plan.stages[name]
        cached = s.done and name not in forced
        reason = "cached" if cached else ("forced" if name in forced else why_run(plan, s))
        dist.log(f"{'[dry-run] ' if dry_run else ''}{name:<14} {s.kind:<9} {s.fingerprint}  "
                 f"{'cached' if cached else 'RUN'}: {reason}")
        if dry_run:
            continue
        if cached:
            results[name] = json.loads((s.out_dir / DONE_FILE).read_text()).get("summary", {})
            continue
        if s.cfg.nproc_per_node > 1 or s.cfg.nnodes > 1:
            s.out_dir.mkdir(parents=True, exist_ok=True)
            with StageLock(s.out_dir):
                run_subprocess(plan, s, force=name in forced)
            results[name] = json.loads((s.out_dir / DONE_FILE).read_text()).get("summary", {})
        else:
            results[name] = execute_stage(plan, s, force=name in forced)
    return results
