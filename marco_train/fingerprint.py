"""Stage fingerprints: what goes into one (README, "Running stages"), and the one-line reason it differs from
a previous run's.

fingerprint_inputs = {kind, seed, config (resolved, minus runtime-only and unread keys), files (the content of
every local path the config names that the stage reads; a hub id pinned to its cached revision), code (hash of
every source module of the stage's import closure: code_hash.py), libraries (versions of the third-party
packages that closure imports), upstream (fingerprints of the stages it reads)}.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import OmegaConf

from .code_hash import CodeIndex
from .config import input_path_keys
from .io import HashCache, hash_json, hash_path

HASH_CACHE_FILE = "content_hashes.json"  # under <runs_dir>/_cache/
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")
UNPINNED = "revision unknown: not in the local hub cache"
PLANNED_ENV = "MARCO_PLANNED_FINGERPRINTS"  # {stage name: fingerprint} a runner hands the stage it launches


def hash_cache(runs_dir: str) -> HashCache:
    """The content-hash cache shared by the plans (and the dpo reference cache) of one runs directory."""
    return HashCache(Path(runs_dir) / "_cache" / HASH_CACHE_FILE)


def hub_cache_dir() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE  # a constants module: no network, no heavy imports

    return Path(HF_HUB_CACHE)


def hub_revision(repo_id: str) -> Optional[str]:
    """The commit the local hub cache resolves `repo_id`'s main branch to (a model, else a dataset), or None."""
    name = repo_id.split(":", 1)[0].replace("/", "--")
    for kind in ("models", "datasets"):
        ref = hub_cache_dir() / f"{kind}--{name}" / "refs" / "main"
        if ref.is_file():
            return f"{kind[:-1]} {ref.read_text().strip()}"
    return None


def input_identity(value: str, cache: Optional[HashCache]) -> str:
    """What stands for the content of a path key's value in a fingerprint."""
    if Path(value).expanduser().exists():
        return "sha256:" + hash_path(Path(value).expanduser(), cache)
    if _HUB_ID.fullmatch(value):
        revision = hub_revision(value)
        return f"hub:{value}@{revision}" if revision else f"hub:{value} ({UNPINNED})"
    return f"not found: {value}"


def _without(container: Dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        container = container.get(key)
        if not isinstance(container, dict):
            return
    container.pop(last, None)


def plugin_modules(config: Dict[str, Any]) -> List[str]:
    """The user's own modules a stage config names besides its kind: a plug-in task (`task: mylab.tasks.x`)."""
    task = config.get("task")
    return [task] if isinstance(task, str) and "." in task else []


class Fingerprinter:
    """Computes stage fingerprint inputs for one plan; reuses content hashes through <runs_dir>/_cache."""

    def __init__(self, runs_dir: str):
        self.runs_dir = Path(runs_dir)
        self.cache = hash_cache(runs_dir)
        self.code = CodeIndex(self.cache)

    def fresh(self) -> "Fingerprinter":
        """A fingerprinter that looks at the files again (same hash cache), to re-check a stage before it runs."""
        other = object.__new__(Fingerprinter)
        other.runs_dir, other.cache, other.code = self.runs_dir, self.cache, CodeIndex(self.cache)
        return other

    def inputs(self, s, seed: int, runtime: Iterable[str], upstream: Dict[str, str]) -> Dict[str, Any]:
        """s: a pipeline StageInstance; upstream: {input name: upstream fingerprint}."""
        unread = tuple(s.module.unread_keys(s.cfg)) if hasattr(s.module, "unread_keys") else ()
        config = OmegaConf.to_container(s.cfg, resolve=True)
        for key in (*runtime, *unread):
            _without(config, key)
        files = {}
        for key in input_path_keys(s.module.Config):
            value = OmegaConf.select(s.cfg, key)
            if value and key not in unread:
                files[key] = input_identity(str(value), self.cache)
        code, libraries = {}, {}
        for module in [s.module.__name__] + plugin_modules(config):  # a plug-in task's code is the stage's code too
            closure = self.code.closure(module)
            code.update(closure["modules"])
            libraries.update(closure["libraries"])
        return {"kind": s.kind, "seed": seed, "config": config, "files": files, "code": dict(sorted(code.items())),
                "libraries": dict(sorted(libraries.items())), "upstream": dict(sorted(upstream.items()))}

    def save(self, create: bool = True) -> None:
        """Store the hash cache; create=False (planning, --dry-run) writes only into an existing runs dir, so a
        plan that fails its checks leaves nothing behind."""
        if create or self.runs_dir.is_dir():
            self.cache.save()


def fingerprint_of(inputs: Dict[str, Any]) -> str:
    return hash_json(inputs)[:12]


def flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def changes(old: Dict[str, Any], new: Dict[str, Any], upstream_names: Dict[str, str], limit: int = 4) -> List[str]:
    """What differs between two fingerprint_inputs, in words: "code of marco_train.data.split changed", ..."""
    old_code, new_code = old.get("code", {}), new.get("code", {})
    out, modules = [], []
    for m in sorted(set(old_code) | set(new_code)):
        if old_code.get(m) != new_code.get(m):
            modules.append(m if m in old_code and m in new_code else
                           f"{m} ({'added to' if m in new_code else 'left'} the import closure)")
    if modules:
        more = f" (+{len(modules) - limit} more)" if len(modules) > limit else ""
        out.append("code of " + ", ".join(modules[:limit]) + more + " changed")
    flat_old = flatten({k: v for k, v in old.items() if k != "code"})
    flat_new = flatten({k: v for k, v in new.items() if k != "code"})
    for key in sorted(set(flat_old) | set(flat_new)):
        before, after = flat_old.get(key), flat_new.get(key)
        if before == after:
            continue
        section, _, rest = key.partition(".")
        if section == "upstream":
            out.append(f"upstream {upstream_names.get(rest, rest)} changed")
        elif section == "files":
            out.append(f"content of {rest} changed" if before and after else
                       f"{rest} {'now read' if after else 'no longer read'}")
        elif section == "libraries":
            out.append(f"library {rest}: {before or 'not imported'} -> {after or 'not imported'}")
        else:
            out.append(f"{key}: {before!r} -> {after!r}")
    return out


def local_content_changed(planned: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """The changes between planning and running that mean other code or other local bytes would run (a hub
    revision appearing in the cache or a new upstream fingerprint only re-plans the stage)."""
    local = [k for k, v in {**planned.get("files", {}), **now.get("files", {})}.items()
             if v.startswith("sha256:") or planned.get("files", {}).get(k, "").startswith("sha256:")]

    def part(inputs):
        return {"code": inputs.get("code", {}), "libraries": inputs.get("libraries", {}),
                "files": {k: inputs.get("files", {}).get(k, "not read") for k in local}}

    return changes(part(planned), part(now), {})


def environment_fingerprints() -> Dict[str, str]:
    """{stage name: fingerprint} the parent runner planned, when it launched this process under torchrun."""
    return json.loads(os.environ.get(PLANNED_ENV, "{}"))
