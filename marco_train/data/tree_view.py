"""What the tree viewer (show_tree.py, tree_html.py) needs: trees from wherever they are, a one-line summary of
each, the filters (solved, failed, with a reflection) and the paths a split stage picked (SFT rows, chosen and
rejected sides of pairs) as marks on their nodes.

A split stage's ids name the paths: an SFT row `<problem id>/<leaf id>`, a pair `<problem id>/<chosen leaf>-<rejected
leaf>` (stages/split.py); a path is its leaf and every node above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

from ..io import DataError
from .trees import Tree, read_tree_files

MARKS = ("sft", "chosen", "rejected")
REFLECTION = "reflection"


def load_trees(path: str | Path) -> List[Tree]:
    """Trees of an mcts stage directory, its trees/ directory, one shard .jsonl, or the authors' v2 files (one
    .json per tree, or a directory of them); a split stage directory reads the trees it was made from."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (an mcts or split stage directory, a trees/ directory "
                        f"or a .jsonl shard)")
    split = split_source(path)
    if split is not None:
        return load_trees(split)
    if path.is_dir() and (path / "trees").is_dir():
        path = path / "trees"
    authors = [path] if path.suffix == ".json" else sorted(path.glob("*.json")) if path.is_dir() else []
    if authors and not (path.is_dir() and list(path.glob("*.jsonl"))):
        from .authors_format import read_authors_tree

        return sorted((read_authors_tree(p) for p in authors), key=lambda t: t.problem_id)
    return sorted(read_tree_files(path), key=lambda t: t.problem_id)


def split_source(path: Path) -> Optional[Path]:
    """The tree source a split stage directory recorded (its summary.json), or None if `path` is not one."""
    summary = Path(path) / "summary.json"
    if not (Path(path).is_dir() and summary.is_file() and (Path(path) / "sft").is_dir()):
        return None
    return Path(json.loads(summary.read_text())["source"])


@dataclass
class TreeSummary:
    problem_id: str
    nodes: int
    depth: int
    answers: int  # terminal nodes
    correct: int  # terminals with the right answer
    reflections: int
    stop_reason: str = ""
    marks: Dict[str, int] = field(default_factory=dict)  # mark -> paths of this tree with it

    @property
    def solved(self) -> bool:
        return self.correct > 0


def depth_of(tree: Tree) -> Dict[int, int]:
    """{node id: edges below the root}."""
    depth: Dict[int, int] = {}
    for node_id in tree.nodes:
        chain, node = [], node_id
        while node is not None and node not in depth:
            chain.append(node)
            if len(chain) > len(tree.nodes):
                raise DataError(f"{tree.source}: tree '{tree.problem_id}': parent links form a cycle at node {node}")
            node = tree.nodes[node].parent
        level = -1 if node is None else depth[node]
        for n in reversed(chain):
            level += 1
            depth[n] = level
    return depth


def summarize_tree(tree: Tree, marks: Optional["PathMarks"] = None) -> TreeSummary:
    terminals = [n for n in tree.nodes.values() if n.is_terminal]
    picked = marks.leaves(tree.problem_id) if marks else {}
    return TreeSummary(problem_id=tree.problem_id, nodes=len(tree.nodes), depth=max(depth_of(tree).values()),
                       answers=len(terminals), correct=sum(bool(n.correct) for n in terminals),
                       reflections=sum(n.type == REFLECTION for n in tree.nodes.values()),
                       stop_reason=str(tree.meta.get("stop_reason", "")),
                       marks={m: len(ids) for m, ids in picked.items() if ids})


def list_line(s: TreeSummary) -> str:
    marks = "  " + ", ".join(f"{m} {n}" for m, n in s.marks.items()) if s.marks else ""
    return (f"{s.problem_id:<16} {'solved' if s.solved else 'failed':<6}  nodes {s.nodes:<4} depth {s.depth:<3} "
            f"answers {s.answers:<3} right {s.correct:<3} reflections {s.reflections:<3}"
            f"{'  ' + s.stop_reason if s.stop_reason else ''}{marks}")


def matches(tree: Tree, solved: bool = False, failed: bool = False, with_reflection: bool = False,
            problem_id: Optional[str] = None) -> bool:
    """The viewer's filters, all of those given at once: solved (a right answer), failed (none), with a reflection
    node, one problem id."""
    right = any(n.is_terminal and n.correct for n in tree.nodes.values())
    if (solved and not right) or (failed and right) or (problem_id is not None and tree.problem_id != problem_id):
        return False
    return not with_reflection or any(n.type == REFLECTION for n in tree.nodes.values())


def select(trees: Iterable[Tree], **filters) -> List[Tree]:
    return [t for t in trees if matches(t, **filters)]


class PathMarks:
    """The leaves a split stage picked, per problem: {problem id: {"sft": {leaf}, "chosen": {leaf}, ...}}."""

    def __init__(self, picked: Optional[Dict[str, Dict[str, Set[int]]]] = None):
        self.picked = picked or {}

    @classmethod
    def from_split(cls, split_dir: str | Path) -> "PathMarks":
        """Read a split stage's sft/ and pairs/ (datasets saved to disk: data/schema.py)."""
        from .schema import load_pairs, load_sft

        split_dir = Path(split_dir)
        if not (split_dir / "sft").is_dir() or not (split_dir / "pairs").is_dir():
            raise DataError(f"{split_dir}: not a split stage directory (no sft/ and pairs/)")
        picked: Dict[str, Dict[str, Set[int]]] = {}

        def add(problem: str, mark: str, leaf: str, row_id: str) -> None:
            try:
                picked.setdefault(problem, {m: set() for m in MARKS})[mark].add(int(leaf))
            except ValueError:
                raise DataError(f"{split_dir}: row id '{row_id}' does not end in a leaf node id") from None

        for row in load_sft(split_dir / "sft"):
            add(str(row["problem_id"]), "sft", row["id"].rsplit("/", 1)[-1], row["id"])
        for row in load_pairs(split_dir / "pairs"):
            chosen, _, rejected = row["id"].rsplit("/", 1)[-1].partition("-")
            add(str(row["problem_id"]), "chosen", chosen, row["id"])
            add(str(row["problem_id"]), "rejected", rejected, row["id"])
        return cls(picked)

    def leaves(self, problem_id: str) -> Dict[str, Set[int]]:
        return self.picked.get(problem_id, {})

    def node_marks(self, tree: Tree) -> Dict[int, List[str]]:
        """{node id: the marks of the picked paths through it}, for one tree; a leaf the tree lacks is an error."""
        out: Dict[int, List[str]] = {}
        for mark, leaves in self.leaves(tree.problem_id).items():
            for leaf in sorted(leaves):
                if leaf not in tree.nodes:
                    raise DataError(f"tree '{tree.problem_id}' ({tree.source}) has no node {leaf}, which the split "
                                    f"picked as a {mark} path: the split was made from other trees")
                node: Optional[int] = leaf
                while node is not None:
                    if mark not in out.setdefault(node, []):
                        out[node].append(mark)
                    node = tree.nodes[node].parent
        return {n: [m for m in MARKS if m in ms] for n, ms in out.items()}


def children_of(tree: Tree) -> Dict[Optional[int], list]:
    children: Dict[Optional[int], list] = {}
    for node in sorted(tree.nodes.values(), key=lambda n: n.id):
        children.setdefault(node.parent, []).append(node)
    return children
