"""The tree-record format (mcts_data/README.md): one tree per JSONL line, a flat table of nodes.

The one home of the format: the search writes its lines with `tree_record` / `node_record`, and the split
and the viewer read them back with `read_trees` / `read_tree_files`, which check every field they rely on and
name file:line, the node and the field when one is wrong. The authors' v2 files are read into the same
record classes by authors_format.py.
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
    value: float = 0.0
    confidence: Optional[float] = None
    samples: int = 1  # sibling samples with this text merged into the node (1 in the authors' format)


@dataclass
class Tree:
    problem_id: str
    question: str
    answer: str  # ground truth
    nodes: Dict[int, Node]
    source: str = ""  # "file:line" (or the file), for error messages and the summary
    meta: dict = field(default_factory=dict)  # the search's per-tree fields: iterations, stop_reason, ...


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
                    value=_check(at, raw, "value", (int, float), nullable=True) or 0.0,
                    confidence=_check(at, raw, "confidence", (int, float), nullable=True),
                    samples=_check(at, raw, "samples", int, nullable=True) or 1)
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
    meta = {k: v for k, v in record.items() if k not in TREE_FIELDS}
    return Tree(str(record["problem_id"]), str(record["question"]), str(record["answer"]), nodes, where, meta)


def read_trees(path: str | Path) -> Iterator[Tree]:
    """Trees of one JSONL shard of our schema; a malformed line fails with file:line and the field."""
    for where, record in iter_jsonl(path, TREE_FIELDS, what="a JSON object (one tree per line)"):
        yield parse_tree(record, where)




def tree_files(path: str | Path) -> List[Path]:
    """The shard files of a shard file, a trees/ directory or an mcts stage directory."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    path = path / "trees" if (path / "trees").is_dir() else path
    return sorted(path.glob("*.jsonl"))


def read_tree_files(path: str | Path) -> Iterator[Tree]:
    for f in tree_files(path):
        yield from read_trees(f)


def node_record(*, id: int, parent: Optional[int], type: str, text: str, visits: int, value: float,
                confidence: Optional[float], is_terminal: bool, answer: Optional[str], correct: Optional[bool],
                generated_tokens: int, samples: int = 1, token_ids: Optional[List[int]] = None) -> dict:
    """One node of a tree line (the search's writer)."""
    rec = {"id": id, "parent": parent, "type": type, "text": text, "visits": visits, "value": round(value, 6),
           "confidence": None if confidence is None else round(confidence, 6), "is_terminal": is_terminal,
           "answer": answer, "correct": correct, "generated_tokens": generated_tokens, "samples": samples}
    if token_ids is not None:
        rec["token_ids"] = token_ids
    return rec


def tree_record(*, problem_id: str, question: str, answer: str, nodes: List[dict], **meta) -> dict:
    """One tree line: the fields every reader needs, then the search's own (task, fingerprint, iterations, ...)."""
    return {"problem_id": problem_id, "question": question, "answer": answer, **meta, "nodes": nodes}
