"""Search trees: nodes, UCT selection, backpropagation, rewards, reflection anchors, stopping rules, records.

Pure Python, no model: search.py drives these with generated text. The record written per tree is
documented in mcts_data/README.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from ..config import at_least
from ..data.trees import node_record, tree_record
from ..tasks.base import Problem
from .policy import ROOT


@dataclass(eq=False)
class Node:
    id: int
    parent: Optional["Node"]
    type: str
    text: str  # exactly what this node adds to the response (separator, tags and prefill included)
    depth: int
    token_ids: Dict[str, List[int]] = field(default_factory=dict)  # tokenizer name -> ids of `text`
    children: List["Node"] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0  # W: sum of the rewards backpropagated through this node (mean value = value / visits)
    conf_sum: float = 0.0  # sum of c_i over the tokens generated for this node
    generated: int = 0  # tokens the model generated for this node (prefill text excluded)
    is_terminal: bool = False
    answer: Optional[str] = None
    correct: Optional[bool] = None
    expanded: bool = False
    finish_reason: str = ""
    pending: object = None  # the generation job that will fill this node's text (search.py), None once filled
    samples: int = 1  # sibling samples with exactly this text, merged into this node (search.py, `place`)
    settled: bool = False  # filled and placed: terminal-or-not decided, or merged
    merged_into: Optional["Node"] = None  # the sibling with the same text this sample was merged into
    born: int = 0  # the rollout (0-based) during which the node was created: its tokens are that rollout's cost

    @property
    def confidence(self) -> Optional[float]:
        return self.conf_sum / self.generated if self.generated else None


@dataclass
class StopRules:
    stop_correct: int = at_least(1, default=8)  # enough correct rollouts: stop
    min_iterations: int = at_least(0, default=32)  # after more than this many iterations ...
    min_correct: int = at_least(0, default=4)  # ... this many correct are enough
    max_iterations: int = at_least(1, default=128)  # give up
    count_distinct: bool = True  # count distinct correct response texts (False: every correct rollout, as the authors)


@dataclass(eq=False)
class Tree:
    problem: Problem
    rng: random.Random
    nodes: List[Node] = field(default_factory=list)
    iterations: int = 0
    correct_rollouts: int = 0
    correct_texts: Set[str] = field(default_factory=set)  # distinct response texts scored correct
    reflections: int = 0
    tokens_generated: int = 0
    sampled: int = 0  # nodes filled from a generated sample (before merging)
    duplicates: int = 0  # of those, samples whose text a filled sibling already had (merged into it)
    stop_reason: str = ""
    pattern: str = ""  # the transition pattern this tree follows (policy.py; "" = the matrix of node_types)
    rollouts: List[Node] = field(default_factory=list)  # the terminal each rollout reached, in order
    tokens_by_rollout: Dict[int, int] = field(default_factory=dict)  # generated tokens by the rollout they serve
    requests_by_engine: Dict[str, int] = field(default_factory=dict)  # engine name -> generation requests
    samples_by_engine: Dict[str, Dict[str, int]] = field(default_factory=dict)  # engine -> node type -> samples
    next_id: int = 1  # node ids are never reused: a merged sample's id stays taken (request seeds derive from ids)

    def __post_init__(self):
        if not self.nodes:
            self.nodes.append(Node(0, None, ROOT, "", 0))

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add(self, parent: Node, type: str, text: str, **kw) -> Node:
        node = Node(self.next_id, parent, type, text, parent.depth + 1, born=self.iterations, **kw)
        self.next_id += 1
        self.nodes.append(node)
        parent.children.append(node)
        return node

    def merge(self, node: Node, twin: Node) -> None:
        """Drop sample `node` from the tree: its text is its sibling `twin`'s, which counts it as a sample."""
        node.merged_into, node.settled = twin, True
        twin.samples += node.samples
        node.parent.children.remove(node)
        self.nodes.remove(node)
        self.duplicates += 1

    @property
    def correct_count(self) -> int:
        return len(self.correct_texts)

    def depth(self) -> int:
        return max(n.depth for n in self.nodes)


def path(node: Node) -> List[Node]:
    """root .. node."""
    out = []
    while node is not None:
        out.append(node)
        node = node.parent
    return out[::-1]


def response_text(node: Node) -> str:
    return "".join(n.text for n in path(node))


def path_confidence(node: Node) -> Optional[float]:
    """Running confidence of the path to `node`: mean c_i over every token generated along it."""
    nodes = path(node)
    count = sum(n.generated for n in nodes)
    return sum(n.conf_sum for n in nodes) / count if count else None


def uct(child: Node, parent_visits: int, c: float) -> float:
    return child.value / child.visits + c * math.sqrt(2 * math.log(parent_visits) / child.visits)


def select_child(node: Node, c: float, rng: random.Random) -> Node:
    """The first unvisited child (in expansion order); otherwise the best UCT Q/N + c*sqrt(2 ln N_parent / N),
    ties broken by the tree's seeded RNG."""
    for child in node.children:
        if child.visits == 0:
            return child
    scores = [uct(child, node.visits, c) for child in node.children]
    best = max(scores)
    return rng.choice([child for child, s in zip(node.children, scores) if s == best])


def backpropagate(node: Node, reward: float) -> None:
    while node is not None:
        node.visits += 1
        node.value += reward
        node = node.parent


def reward(node: Node, kind: str, verified_weight: float = 0.5) -> float:
    """verified: 1/0 from the task's check; confidence: the path's mean c_i; mixed: weighted sum of both."""
    verified = 1.0 if node.correct else 0.0
    if kind == "verified":
        return verified
    confidence = path_confidence(node) or 0.0
    if kind == "confidence":
        return confidence
    return verified_weight * verified + (1 - verified_weight) * confidence


def reflection_anchor(terminal: Node, anchor_type: str) -> Optional[Node]:
    """The nearest ancestor of `anchor_type` above a wrong terminal (the root never), or None."""
    node = terminal.parent
    while node is not None and node.parent is not None:
        if node.type == anchor_type:
            return node
        node = node.parent
    return None


def record_rollout(tree: Tree, terminal: Node) -> None:
    tree.iterations += 1
    tree.rollouts.append(terminal)
    if terminal.correct:
        tree.correct_rollouts += 1
        tree.correct_texts.add(response_text(terminal))


def stop_reason(tree: Tree, rules: StopRules) -> str:
    """Why the search of this tree stops now, or "" to go on."""
    correct = tree.correct_count if rules.count_distinct else tree.correct_rollouts
    if correct >= rules.stop_correct:
        return "enough_correct"
    if tree.iterations > rules.min_iterations and correct >= rules.min_correct:
        return "enough_correct_after_min_iterations"
    if tree.iterations >= rules.max_iterations:
        return "gave_up"
    return ""


def to_record(tree: Tree, task: str, fingerprint: str, token_ids: bool = True) -> dict:
    """One JSONL line of the tree-record format (data/trees.py, mcts_data/README.md). Node ids are written as
    the index in the node table (merged samples leave no gap)."""
    index = {n.id: i for i, n in enumerate(tree.nodes)}
    nodes = [node_record(id=index[n.id], parent=index[n.parent.id] if n.parent else None, type=n.type, text=n.text,
                         visits=n.visits, value=n.value, confidence=n.confidence, is_terminal=n.is_terminal,
                         answer=n.answer, correct=n.correct, generated_tokens=n.generated, samples=n.samples,
                         token_ids=n.token_ids if token_ids else None) for n in tree.nodes]
    return tree_record(problem_id=tree.problem.id, question=tree.problem.question, answer=tree.problem.answer,
                       task=task, fingerprint=fingerprint, iterations=tree.iterations,
                       correct_terminals=tree.correct_count, correct_rollouts=tree.correct_rollouts,
                       reflections=tree.reflections, tokens_generated=tree.tokens_generated,
                       sampled_nodes=tree.sampled, duplicate_samples=tree.duplicates,
                       stop_reason=tree.stop_reason, pattern=tree.pattern,
                       requests_by_engine=dict(sorted(tree.requests_by_engine.items())),
                       samples_by_engine={e: dict(sorted(by_type.items()))
                                          for e, by_type in sorted(tree.samples_by_engine.items())},
                       nodes=nodes)
