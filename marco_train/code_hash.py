"""The code a stage runs, for its fingerprint: a static walk of a module's import closure (nothing is imported).

`CodeIndex().closure("marco_train.stages.split")` -> {"modules": {name: hash}, "libraries": {package: version}}.

* Source-hashed modules: those of `marco_train`, of the walked module's own top-level package (a user's plug-in
  stage, `kind: mylab.stages.x`) and of any other package found outside site-packages (e.g. a helper on
  PYTHONPATH). A module's hash is the sha256 of its AST with docstrings removed: comments, docstrings and
  layout never change it; any other edit does.
* Imports seen, anywhere in a file (stages import lazily, inside functions): `import a.b`, `from a import b`
  (b too when it is a submodule), relative imports, the packages above each module (their `__init__.py`
  runs), `importlib.import_module("a.b")` / `find_spec("x")` with a literal name, and string literals that
  name a module of a source-hashed package (registries like `{"toy": "marco_train.tasks.toy"}`). A module
  name computed at run time is not seen.
* The standard library (`sys.stdlib_module_names`) is left out. A third-party top-level package is recorded
  by the installed versions of the distributions that provide it (importlib.metadata), or "not installed",
  so installing vllm re-runs only the stages whose closure imports vllm. Plus the Python version (X.Y).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .io import HashCache

PROJECT = "marco_train"
SITE_DIRS = ("site-packages", "dist-packages")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_IMPORT_CALLS = ("import_module", "find_spec", "__import__")


def strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def imported_names(tree: ast.AST, name: str, is_package: bool) -> List[str]:
    """Absolute module names `tree` (module `name`) may import; a leading "?" marks a name that counts only if
    it resolves to a module (`from a import b`: b may be a function; a string literal may be any text)."""
    package = name if is_package else name.rpartition(".")[0]
    out: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append(module)
            out.extend(f"?{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in _IMPORT_CALLS:
                out.append(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            out.append("?" + node.value)
    return [n for n in out if n.lstrip("?")]


class CodeIndex:
    """Finds, parses and hashes modules, remembering each for the life of the index (one plan); `cache`
    (an io.HashCache) carries parses and the installed-distribution table over to the next plan."""

    def __init__(self, cache: Optional[HashCache] = None):
        self.cache = cache
        self._where: Dict[str, Optional[Tuple[Optional[Path], List[Path]]]] = {}
        self._parsed: Dict[str, Tuple[str, List[str]]] = {}
        self._closures: Dict[str, dict] = {}
        self._dists: Optional[Dict[str, List[str]]] = None

    # -------------------------------------------------------------------------------------------- finding

    def locate(self, name: str) -> Optional[Tuple[Optional[Path], List[Path]]]:
        """(file, package directories) of module `name` as an import would find it now, without importing:
        file is None for a namespace package; dirs is empty for a plain module; None if not found."""
        if name not in self._where:
            self._where[name] = self._locate(name)
        return self._where[name]

    def _locate(self, name: str):
        parent, _, last = name.rpartition(".")
        if not parent:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                return None
            if spec is None:
                return None
            dirs = [Path(d) for d in (spec.submodule_search_locations or [])]
            origin = spec.origin if spec.origin and os.path.isfile(spec.origin) else None
            return (Path(origin) if origin else None), dirs
        found = self.locate(parent)
        for d in (found[1] if found else []):
            if (d / last / "__init__.py").is_file():
                return d / last / "__init__.py", [d / last]
            if (d / f"{last}.py").is_file():
                return d / f"{last}.py", []
            if (d / last).is_dir() and any((d / last).glob("*.py")):
                return None, [d / last]  # a namespace package
        return None

    def source_hashed(self, top: str, roots: set) -> Optional[bool]:
        """True: hash the package's source; False: a third-party library; None: the standard library."""
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            return None
        if top in roots:
            return True
        found = self.locate(top)
        if found is None:
            return False  # not installed: recorded as such
        where = found[0] or (found[1][0] if found[1] else Path())
        return not any(part in SITE_DIRS for part in where.parts)

    # -------------------------------------------------------------------------------------------- hashing

    def parse(self, name: str, file: Path, is_package: bool) -> Tuple[str, List[str]]:
        """(sha256 of the docstring-free AST, imported names) of module `name` at `file`."""
        key = f"{name}:{file}"
        if key in self._parsed:
            return self._parsed[key]
        st = file.stat()
        known = self.cache.get(f"code:{name}", file, st) if self.cache else None
        if known:
            self._parsed[key] = known[0], known[1]
            return self._parsed[key]
        if file.suffix != ".py":  # a compiled extension of a source package: its bytes
            result = hashlib.sha256(file.read_bytes()).hexdigest(), []
        else:
            tree = ast.parse(file.read_bytes(), filename=str(file))
            result = hashlib.sha256(ast.dump(strip_docstrings(tree)).encode()).hexdigest(), \
                imported_names(tree, name, is_package)
        if self.cache:
            self.cache.put(f"code:{name}", file, st, list(result))
        self._parsed[key] = result
        return result

    def closure(self, module: str) -> dict:
        """{"modules": {name: hash (16 hex)}, "libraries": {top-level package: versions}} for `module`."""
        if module in self._closures:
            return self._closures[module]
        roots = {PROJECT, module.split(".")[0]}
        modules: Dict[str, str] = {}
        libraries: Dict[str, str] = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
        todo, seen = [module], set()
        while todo:
            raw = todo.pop()
            name, optional = raw.lstrip("?"), raw.startswith("?")
            if name in seen:
                continue
            top = name.split(".")[0]
            kind = self.source_hashed(top, roots)
            if kind is None or (optional and not kind):
                continue  # the standard library; a literal or attribute under a library
            seen.add(name)
            if kind is False:
                libraries[top] = self.version(top)
                continue
            found = self.locate(name)
            if found is None:
                if not optional:
                    modules[name] = "not found"
                continue
            parts = name.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # packages above run first
            file, dirs = found
            if file is not None:
                digest, names = self.parse(name, file, bool(dirs))
                modules[name] = digest[:16]
                todo.extend(names)
        self._closures[module] = {"modules": dict(sorted(modules.items())),
                                  "libraries": dict(sorted(libraries.items()))}
        return self._closures[module]

    # -------------------------------------------------------------------------------------------- versions

    def version(self, top: str) -> str:
        """"dist==version[, ...]" of the installed distributions providing top-level package `top`."""
        if self.locate(top) is None:
            return "not installed"
        if self._dists is None:
            self._dists = self._distributions()
        return ", ".join(self._dists.get(top, [])) or "unknown version"

    def _distributions(self) -> Dict[str, List[str]]:
        """{top-level name: ["dist==version"]}, remembered while the sys.path directories are unchanged
        (installing or removing a distribution changes its directory's mtime)."""
        stamp = []
        for entry in sys.path:
            if not entry:
                continue  # the working directory: files come and go there, distributions do not
            try:
                stamp.append([entry, os.stat(entry).st_mtime_ns])
            except OSError:
                continue
        key = "distributions:" + hashlib.sha256("\0".join(sys.path).encode()).hexdigest()[:12]  # per sys.path
        entry = self.cache.entries.get(key) if self.cache else None
        if entry and entry.get("stat") == stamp:
            return entry["value"]
        table: Dict[str, List[str]] = {}
        for top, names in importlib.metadata.packages_distributions().items():
            versions = set()
            for dist in names:
                try:
                    versions.add(f"{dist}=={importlib.metadata.version(dist)}")
                except importlib.metadata.PackageNotFoundError:
                    continue
            table[top] = sorted(versions)
        if self.cache:
            self.cache.entries[key] = {"stat": stamp, "value": table}
            self.cache.dirty = True
        return table


def code_digest(modules: List[str], index: Optional[CodeIndex] = None) -> str:
    """One sha256 over the closures of `modules` (e.g. the code that computes a cache's values, for its key)."""
    from .io import hash_json

    index = index or CodeIndex()
    return hash_json([index.closure(m) for m in modules])
