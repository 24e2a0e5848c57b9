"""Validated tree records (trees.py) -> root-to-answer paths.

`extract_paths` walks each terminal node back to the root: the path's response text is the plain
concatenation of its nodes' `text` (the root's is ""), exactly the text the search generated. Token lengths
are computed later by the split stage with the *training* tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..io import DataError
from .trees import Tree


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
