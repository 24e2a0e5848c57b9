"""The package's shape, as docs/architecture.md ("Layers") writes it: imports only go down the floors of its
```layers block, no import cycles, no file over 400 lines (light stage imports: tests/test_stage_imports.py).

Every import counts: top-level and function-local, relative and absolute, and a module named by string in a
registry (STAGE_MODULES, TASK_MODULES). The floors are read from the doc, so the doc and this test cannot drift.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "marco_train"
DOC = REPO / "docs" / "architecture.md"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict:
    """{dotted module name: file} for every .py under `root` (a package is its __init__.py)."""
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def read_floors(doc: Path = DOC) -> list:
    """The ```layers block of the doc: one floor per line, lowest first; names relative to marco_train."""
    found = re.findall(r"^```layers\n(.*?)^```", doc.read_text(), re.M | re.S)
    assert len(found) == 1, f"{doc}: expected one ```layers block, found {len(found)}"
    return [line.split() for line in found[0].splitlines() if line.strip() and not line.startswith("#")]


def floor_of(module: str, floors: list) -> int | None:
    """Index of the floor naming `module` or the package holding it (the longest name wins); the top-level
    package itself (marco_train/__init__.py) is on the lowest floor."""
    if module == "marco_train":
        return 0
    best, where = "", None
    for i, names in enumerate(floors):
        for name in names:
            full = f"marco_train.{name}"
            if (module == full or module.startswith(full + ".")) and len(full) > len(best):
                best, where = full, i
    return where


def imports_of(module: str, path: Path, modules: dict) -> list:
    """[(line, imported in-package module)] for every import in the file, at any depth, plus string constants
    that name a module of the package exactly (registries imported by name through importlib)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def add(line: int, target: str) -> None:
        while target and target not in modules:  # `from x import name`: name is an attribute of module x
            target = target.rpartition(".")[0]
        if target and target != module:
            out.append((line, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "marco_train" or alias.name.startswith("marco_train."):
                    add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                if not base:
                    raise AssertionError(f"{path}:{node.lineno}: relative import reaches above the package")
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
                if source != "marco_train" and not source.startswith("marco_train."):
                    continue
            for alias in node.names:
                add(node.lineno, f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            add(node.lineno, node.value)
    return out


def import_graph(modules: dict) -> dict:
    """{module: {imported module: first line}}."""
    graph = {}
    for name, path in modules.items():
        edges = {}
        for line, target in imports_of(name, path, modules):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def layer_violations(graph: dict, modules: dict, floors: list) -> list:
    problems = []
    for name in sorted(graph):
        if floor_of(name, floors) is None:
            problems.append(f"{shown(modules[name])}: module {name} is on no floor of "
                            f"{DOC.relative_to(REPO)} (add it to the ```layers block)")
    for name, edges in sorted(graph.items()):
        low = floor_of(name, floors)
        for target, line in sorted(edges.items()):
            high = floor_of(target, floors)
            if low is not None and high is not None and high > low:
                problems.append(f"{shown(modules[name])}:{line}: {name} imports {target}, a floor above "
                                f"it ({' '.join(floors[low])} < {' '.join(floors[high])} in "
                                f"{DOC.relative_to(REPO)}); move what both need down")
    return problems


def cycles(graph: dict) -> list:
    """One concrete cycle [a, b, ..., a] for every group of two or more modules that reach each other."""
    reach = {}
    for v in graph:  # modules reachable from v (the package has ~80 modules: a search from each is cheap)
        seen, todo = set(), list(graph[v])
        while todo:
            w = todo.pop()
            if w not in seen:
                seen.add(w)
                todo.extend(graph[w])
        reach[v] = seen
    found, covered = [], set()
    for start in sorted(graph):
        if start in covered or start not in reach[start]:
            continue
        group = {w for w in reach[start] if start in reach[w]}
        covered |= group
        parent, frontier = {start: None}, [start]
        while frontier:  # breadth-first inside the group: the shortest way back to `start`
            v = frontier.pop(0)
            if start in graph[v]:
                path = [start]
                while v is not None:
                    path.append(v)
                    v = parent[v]
                found.append(path[::-1])
                break
            for w in sorted(graph[v]):
                if w in group and w not in parent:
                    parent[w] = v
                    frontier.append(w)
    return found


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def describe(cycle: list, graph: dict, modules: dict) -> str:
    steps = [f"{a} ({shown(modules[a])}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "import cycle: " + " -> ".join(steps + [cycle[-1]])


def test_imports_go_down_the_floors_of_docs_architecture():
    modules = package_modules()
    floors = read_floors()
    unknown = [n for names in floors for n in names if f"marco_train.{n}" not in modules]
    assert not unknown, f"{DOC.relative_to(REPO)}: the ```layers block names no module or package: {unknown}"
    problems = layer_violations(import_graph(modules), modules, floors)
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    modules = package_modules()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "\n".join(describe(c, graph, modules) for c in found)


def test_no_file_under_the_package_is_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines (split by what the parts do):\n" + "\n".join(long)


# The checker itself, on hand-made packages: each rule can fail.

def _tree(tmp_path: Path, files: dict) -> dict:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((tmp_path / "marco_train").rglob("*.py"))}


def test_the_checker_sees_local_relative_absolute_and_by_name_imports(tmp_path):
    modules = _tree(tmp_path, {
        "marco_train/__init__.py": "",
        "marco_train/io.py": "",
        "marco_train/tasks/__init__.py": "REGISTRY = {'x': 'marco_train.stages.a'}\n",
        "marco_train/tasks/toy.py": "from .. import io\n\ndef f():\n    from ..stages import a\n",
        "marco_train/stages/__init__.py": "",
        "marco_train/stages/a.py": "import marco_train.tasks.toy\nfrom marco_train.io import x\n",
    })
    graph = import_graph(modules)
    assert graph["marco_train.tasks.toy"] == {"marco_train.io": 1, "marco_train.stages.a": 4}
    assert graph["marco_train.tasks"] == {"marco_train.stages.a": 1}
    assert graph["marco_train.stages.a"] == {"marco_train.tasks.toy": 1, "marco_train.io": 2}
    floors = [["io"], ["tasks"], ["stages"]]
    problems = layer_violations(graph, modules, floors)
    assert len(problems) == 2 and "marco_train.tasks.toy imports marco_train.stages.a" in problems[1]
    assert cycles(graph) == [["marco_train.stages.a", "marco_train.tasks.toy", "marco_train.stages.a"]]


def test_the_checker_names_a_module_on_no_floor(tmp_path):
    modules = _tree(tmp_path, {"marco_train/__init__.py": "", "marco_train/extra.py": "from . import io\n",
                               "marco_train/io.py": ""})
    (problem,) = layer_violations(import_graph(modules), modules, [["io"]])
    assert "module marco_train.extra is on no floor" in problem


def test_floors_are_read_from_the_fenced_block(tmp_path):
    (tmp_path / "a.md").write_text("# doc\n\n```layers\nio config\n# a comment\n\ntasks\n```\n\n```\nx\n```\n")
    assert read_floors(tmp_path / "a.md") == [["io", "config"], ["tasks"]]
