"""The stage DAG: validate a pipeline config, fingerprint every stage instance, plan, and run.

A stage instance writes `runs/<experiment>/<name>-<fingerprint>/` and, last and atomically, `_DONE.json`.
fingerprint = hash(stage kind + the global seed + its resolved config minus RUNTIME_KEYS and the keys it does
not read + the content of the local paths its `path_field` keys name + the hash of its code's import closure
and the versions of the libraries that closure imports + the fingerprints of its upstream stages); see
fingerprint.py. So a changed key, input byte or line of code re-runs that stage and everything downstream;
runtime-only keys re-run nothing.
"""

from __future__ import annotations

import graphlib
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from . import dist
from .config import ConfigError, PipelineConfig, StageError, load_raw, to_yaml, validate
from .faults import fault_point
from .fingerprint import (
    UNPINNED,
    Fingerprinter,
    changes,
    environment_fingerprints,
    fingerprint_of,
    local_content_changed,
)
from .io import atomic_write_json, atomic_write_text, hash_json
from .launch import LOCK_ENV, LOCK_FILE, StageLock, run_subprocess
from .stages import check_inputs, unknown_upstream

# Stage kind -> module; what a stage module defines: marco_train/stages/__init__.py.
STAGE_MODULES = {
    "bootstrap": "marco_train.stages.bootstrap",
    "cot": "marco_train.stages.cot",
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
        return read_done(self.out_dir) is not None


_warned: set = set()


def read_done(out_dir: Path) -> Optional[Dict[str, Any]]:
    """The stage's _DONE.json record, or None when it is missing or unreadable (a damaged one is reported once
    and counts as not done, so the stage runs again)."""
    path = out_dir / DONE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        problem = "" if isinstance(record, dict) else f"not a finished-stage record (a {type(record).__name__})"
    except (OSError, ValueError) as e:
        record, problem = None, f"not valid JSON ({e})"
    if problem:
        if str(path) not in _warned:
            _warned.add(str(path))
            dist.warn(f"{path}: {problem}; the stage counts as not done and runs again")
        return None
    return record


@dataclass
class Plan:
    config_file: str
    overrides: List[str]
    root: DictConfig
    stages: Dict[str, StageInstance]  # topological order
    fingerprinter: Any = None

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
    plan.fingerprinter = Fingerprinter(root.runs_dir)
    planned = environment_fingerprints()  # set when a parent runner launched us under torchrun
    for s in plan.stages.values():
        s.fingerprint_inputs = stage_inputs(plan, s, plan.fingerprinter)
        s.fingerprint = planned.get(s.name) or fingerprint_of(s.fingerprint_inputs)
        s.out_dir = plan.experiment_dir / f"{s.name}-{s.fingerprint}"
    plan.fingerprinter.save(create=False)
    return plan


def stage_inputs(plan: Plan, s: StageInstance, fingerprinter: Fingerprinter) -> Dict[str, Any]:
    runtime = RUNTIME_KEYS + tuple(getattr(s.module, "EXTRA_RUNTIME_KEYS", ()))
    upstream = {k: plan.stages[v].fingerprint for k, v in s.inputs.items()}
    return fingerprinter.inputs(s, plan.root.seed, runtime, upstream)


def replan(plan: Plan, s: StageInstance) -> None:
    """Just before `s` runs: fingerprint it again. Other code or local input bytes than were planned stop the
    run (their result must not go under the planned fingerprint); a hub revision that appeared in the cache
    meanwhile, or a re-planned upstream, moves the stage to its new directory."""
    fingerprinter = plan.fingerprinter.fresh()
    now = stage_inputs(plan, s, fingerprinter)
    fingerprinter.save()
    changed = local_content_changed(s.fingerprint_inputs, now)
    if changed:
        raise StageError(f"stage '{s.name}': {'; '.join(changed)} since this run was planned; run the "
                         f"pipeline again (finished stages stay cached)")
    if fingerprint_of(now) != s.fingerprint:
        why = "; ".join(changes(s.fingerprint_inputs, now, {}))
        s.fingerprint_inputs, s.fingerprint = now, fingerprint_of(now)
        s.out_dir = plan.experiment_dir / f"{s.name}-{s.fingerprint}"
        dist.log(f"{s.name}: re-planned ({why}) -> {s.out_dir.name}")


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


def _previous_run(plan: Plan, s: StageInstance) -> Optional[Path]:
    done = [p for p in plan.experiment_dir.glob(f"{s.name}-*") if p != s.out_dir and read_done(p) is not None]
    return max(done, key=lambda p: (p / DONE_FILE).stat().st_mtime) if done else None


def why_run(plan: Plan, s: StageInstance) -> str:
    """A one-line reason this stage will run, diffing against its last finished run when there is one."""
    if (s.out_dir / DONE_FILE).exists():
        return f"its {DONE_FILE} is unreadable: runs again"
    if s.out_dir.exists():
        return "started before but not finished: resumes" if getattr(s.module, "RESUMABLE", False) \
            else "started before but not finished: redone"
    prev = _previous_run(plan, s)
    if prev is None:
        return "never run"
    names = {k: plan.stages[v].name for k, v in s.inputs.items()}
    changed = changes(read_done(prev).get("fingerprint_inputs", {}), s.fingerprint_inputs, names)
    return "changed since " + prev.name + ": " + "; ".join(changed or ["nothing recorded differs"])


def missing_upstream(plan: Plan, s: StageInstance) -> Optional[str]:
    """Why `s` cannot run yet (an upstream stage not finished, or finished with its output gone), or None."""
    for input_name, upstream in s.inputs.items():
        u = plan.stages[upstream]
        if not u.done:
            return (f"stage '{s.name}' needs '{upstream}' finished first: run "
                    f"`marco-train run --config {plan.config_file} --until {s.name}`")
        gone = [o for o in getattr(s.module, "READS", {}).get(input_name, ()) if not (u.out_dir / o).exists()]
        if gone:
            return (f"stage '{s.name}' needs {u.out_dir / gone[0]} from stage '{upstream}', which is marked done "
                    f"({DONE_FILE}) but that output is gone; re-run it: `marco-train run --config "
                    f"{plan.config_file} --force {upstream}`")
    return None


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


def _clear(directory: Path, keep: tuple) -> None:
    for child in directory.iterdir():
        if child.name not in keep:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def execute_stage(plan: Plan, s: StageInstance, force: bool = False) -> Dict[str, Any]:
    """Run one stage instance here (all ranks of a torchrun job call this). Returns its summary."""
    from . import logs
    from .tracking import stage_tracker

    dist.init(s.cfg.dist_timeout_s)
    logs.quiet_libraries()
    planned_dir = os.environ.get(LOCK_ENV)
    if planned_dir and Path(planned_dir).name.startswith(f"{s.name}-") and planned_dir != str(s.out_dir.resolve()):
        raise StageError(f"stage '{s.name}': the runner planned {planned_dir} but this process fingerprints "
                         f"{s.out_dir}: code or inputs changed while the stage was starting; run the pipeline "
                         f"again")
    problem = missing_upstream(plan, s)
    if problem:
        raise StageError(problem)
    plan.fingerprinter.save()
    lock = StageLock(s.out_dir)
    if dist.is_main():
        lock.__enter__()
    try:
        if dist.is_main() and force:
            _clear(s.out_dir, keep=(LOCK_FILE,))
        done = dist.broadcast_object(read_done(s.out_dir) if dist.is_main() else None)
        if done:
            dist.log(f"{s.name}: cached ({s.out_dir})")
            return done.get("summary", {})
        if dist.is_main():
            (s.out_dir / DONE_FILE).unlink(missing_ok=True)  # a damaged one
            if not getattr(s.module, "RESUMABLE", False):
                _clear(s.out_dir, keep=(LOCK_FILE, "wandb_run_id", "wandb"))  # a non-checkpointing stage is redone
            atomic_write_text(s.out_dir / "config.yaml", to_yaml(s.cfg))
        dist.barrier()
        started = time.time()
        tracker = stage_tracker(plan, s)  # upstream stages' outputs marked as its inputs
        ctx = StageContext(s.name, s.kind, s.cfg, plan.root, s.out_dir,
                           {k: plan.stages[v].out_dir for k, v in s.inputs.items()}, s.fingerprint, tracker)
        dist.log(f"{s.name}: running ({s.kind}) -> {s.out_dir}")
        summary = s.module.run(ctx) or {}
        dist.barrier()
        fault_point(s.name, "before_done", s.kind)
        if dist.is_main():
            # the summary's values are already logged under the stage's keys: W&B's summary shows their last values
            tracker.summary({"stage_seconds": round(time.time() - started, 2)})
            tracker.log_outputs(s.name, s.kind, s.out_dir, s.fingerprint)
            atomic_write_json(s.out_dir / DONE_FILE, {
                "stage": s.name, "kind": s.kind, "fingerprint": s.fingerprint,
                "fingerprint_inputs": s.fingerprint_inputs, "seconds": round(time.time() - started, 2),
                "world_size": dist.world_size(), "wandb_run_id": tracker.run_id, "summary": summary})
        tracker.finish()
        dist.barrier()
        return summary
    finally:
        lock.__exit__()


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
        if not dry_run and not cached:
            replan(plan, s)
            cached = s.done and name not in forced
        reason = "cached" if cached else ("forced" if name in forced else why_run(plan, s))
        blocked = None if cached else missing_upstream(plan, s)
        if blocked and "output is gone" in blocked:  # (not-yet-run upstreams are normal in a plan)
            reason += f"; but it cannot: {blocked}"
        unpinned = [f"{k} {v[4:]}" for k, v in s.fingerprint_inputs["files"].items() if v.endswith(f"({UNPINNED})")]
        if unpinned and not cached:
            reason += "; " + "; ".join(unpinned)
        dist.log(f"{'[dry-run] ' if dry_run else ''}{name:<14} {s.kind:<9} {s.fingerprint}  "
                 f"{'cached' if cached else 'RUN'}: {reason}")
        if dry_run:
            continue
        if cached:
            results[name] = read_done(s.out_dir).get("summary", {})
            continue
        problem = missing_upstream(plan, s)
        if problem:
            raise StageError(problem)
        if s.cfg.nproc_per_node > 1 or s.cfg.nnodes > 1:
            s.out_dir.mkdir(parents=True, exist_ok=True)
            with StageLock(s.out_dir):
                run_subprocess(plan, s, force=name in forced)
            done = read_done(s.out_dir)
            if done is None:
                raise StageError(f"stage '{s.name}' exited without writing {s.out_dir / DONE_FILE}")
            results[name] = done.get("summary", {})
        else:
            results[name] = execute_stage(plan, s, force=name in forced)
    return results
