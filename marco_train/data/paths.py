"""Trees in our schema (mcts_data/README.md) -> validated trees -> root-to-answer paths.

A tree is one JSONL line; `read_trees` checks every field the split stage relies on and names file:line,
the node and the field when one is wrong. `extract_paths` walks each terminal node back to the root: the
path's response text is the plain concatenation of its nodes' `text` (the root's is ""), exactly the text the
search generated. Token lengths are computed later by the split stage with the *training* tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from ..io import DataError, check_record, iter_jsonl

TREE_FIELDS = ("problem_id", "question", "answer", "nodes")
NODE_FIELDS = ("id", "parent", "text", "is_terminal", "correct")


@dataclass
class Node:
    id: int
    parent: Optional[int]
    type: str
    text: str
    is_terminal: bool
    correct: Optional[bool]
    answer: Optional[str] = None
    visits: int = 0
    confidence: Optional[float] = None


@dataclass
class Tree:
    problem_id: str
    question: str
    answer: str  # ground truth
    nodes: Dict[int, Node]
    source: str = ""  # "file:line" (or the file), for error messages and the summary


@dataclass
class PathRecord:
    """One root-to-terminal path. `tokens` is filled in by the split stage (response tokens incl. end-of-turn)."""
    problem_id: str
    question: str
    response: str
    correct: Optional[bool]  # None: the terminal was never scored
    leaf_id: int
    node_ids: List[int]
    predicted: Optional[str] = None
    confidence: Optional[float] = None  # mean node confidence along the path (nodes that have one)
    tokens: int = 0
    tercile: str = ""
    extra: dict = field(default_factory=dict)


def _check(where: str, raw: dict, name: str, types, nullable: bool = False):
    types = types if isinstance(types, tuple) else (types,)
    value = raw.get(name)
    if value is None and nullable:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
        raise DataError(f"{where}: field '{name}' must be {want}, got {value!r:.60}")
    return value


def parse_tree(record: dict, where: str) -> Tree:
    """Validate one tree record (already JSON-decoded); `where` is "file:line"."""
    _check(where, record, "problem_id", (str, int))
    _check(where, record, "question", str)
    _check(where, record, "answer", (str, int, float))
    if not isinstance(record["nodes"], list) or not record["nodes"]:
        raise DataError(f"{where}: field 'nodes' must be a non-empty list of nodes")
    nodes: Dict[int, Node] = {}
    for i, raw in enumerate(record["nodes"]):
        at = f"{where}: tree '{record['problem_id']}' nodes[{i}]"
        check_record(at, raw, NODE_FIELDS)
        node = Node(id=_check(at, raw, "id", int), parent=_check(at, raw, "parent", int, nullable=True),
                    type=str(raw.get("type", "")), text=_check(at, raw, "text", str),
                    is_terminal=_check(at, raw, "is_terminal", bool),
                    correct=_check(at, raw, "correct", bool, nullable=True),
                    answer=_check(at, raw, "answer", str, nullable=True),
                    visits=_check(at, raw, "visits", int, nullable=True) or 0,
                    confidence=_check(at, raw, "confidence", (int, float), nullable=True))
        if node.id in nodes:
            raise DataError(f"{at}: duplicate node id {node.id}")
        nodes[node.id] = node
    roots = [n.id for n in nodes.values() if n.parent is None]
    if len(roots) != 1:
        raise DataError(f"{where}: tree '{record['problem_id']}' must have exactly one root (parent null), has {roots}")
    for n in nodes.values():
        if n.parent is not None and n.parent not in nodes:
            raise DataError(f"{where}: tree '{record['problem_id']}' node {n.id}: field 'parent' names unknown node "
                            f"{n.parent}")
    return Tree(str(record["problem_id"]), str(record["question"]), str(record["answer"]), nodes, where)


def read_trees(path: str | Path) -> Iterator[Tree]:
    """Trees of one JSONL shard of our schema; a malformed line fails with file:line and the field."""
    for where, record in iter_jsonl(path, TREE_FIELDS, what="a JSON object (one tree per line)"):
        yield parse_tree(record, where)


def extract_paths(tree: Tree) -> List[PathRecord]:
    """Every root-to-terminal path of the tree, in node-id order of the terminals."""
    out = []
    for leaf in sorted((n for n in tree.nodes.values() if n.is_terminal), key=lambda n: n.id):
        chain, node, seen = [], leaf, set()
        while node is not None:
            if node.id in seen:
                raise DataError(f"{tree.source}: tree '{tree.problem_id}': parent links form a cycle at node {node.id}")
            seen.add(node.id)
            chain.append(node)
            node = tree.nodes[node.parent] if node.parent is not None else None
        chain.reverse()
        confidences = [n.confidence for n in chain if n.confidence is not None]
        out.append(PathRecord(
            problem_id=tree.problem_id, question=tree.question, response="".join(n.text for n in chain),
            correct=leaf.correct, leaf_id=leaf.id, node_ids=[n.id for n in chain], predicted=leaf.answer,
            confidence=sum(confidences) / len(confidences) if confidences else None))
    return out
