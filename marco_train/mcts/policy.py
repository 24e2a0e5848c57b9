"""The node-type policy: which children a node expands into, how each child's text starts and where it stops.

Granularities (the mcts stage's `granularity`):
* `tagged` (v2): a node is one tagged segment `<type>...</type>`; its children come from the transition
  matrix (`node_types.<type>.children`: child type -> samples, in expansion order); it starts with the
  separator (except right after the root), its open tag and a prefill chosen by the tree's RNG, and
  generation stops at its closing tag. A prefill that already ends with the closing tag costs no generation
  (and gives one child, however many samples the matrix asks for: they would all be the same text).
* `step` (v1): a node is the model's text up to and including the next newline; `step_samples` children.
* `mini_step` (v1): a node is `mini_step_tokens` (32 or 64) generated tokens; `step_samples` children.
In every granularity a node is terminal when its answer closes or the model ends the sequence, and the
answer is never split: a step that opens `<answer>` is continued to `</answer>`. Reflection nodes are
tagged segments in every granularity. A node at depth `max_depth - 1` expands into one `answer` only, so
no path is longer than `max_depth` nodes below the root.

Transition patterns (`transition_patterns`, ours; empty by default): named variants of the matrix, each
mapping node types to the children they expand into instead of `node_types.<type>.children`. With patterns
configured, every tree draws one by its own seeded RNG (derive_seed(seed, problem id, "pattern")), records
its name (`pattern` in the tree record) and follows it throughout. The paper samples one of four patterns per
query and does not publish them; the four in configs/mcts/patterns_ours.yaml are ours.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..config import at_least
from ..engines.base import derive_seed
from ..prompts import NODE_TYPES, REFLECTION_TEXT, SEGMENT_SEPARATOR, SUB_TASK_PREFILL, close_tag, open_tag

ROOT, ANSWER, REFLECTION = "root", "answer", "reflection"
GRANULARITIES = ("tagged", "step", "mini_step")
_OPEN_TAG_RE = re.compile(r"<(" + "|".join(NODE_TYPES) + r")>")


@dataclass
class NodeTypeConfig:
    children: Dict[str, int] = at_least(0, default_factory=dict)  # child type -> samples; 0 drops a default child
    prefills: List[str] = field(default_factory=list)  # one is drawn per expansion by the tree's RNG
    max_tokens: int = at_least(0, default=0, hint="0 = the stage's max_node_tokens")
    special: bool = False  # generate this type with `special_model` (when one is configured)


def default_node_types() -> Dict[str, NodeTypeConfig]:
    """The authors' v2 demo matrix, with prefills the toy model was trained on (marco_train/tasks/traces.py)."""
    t = NodeTypeConfig
    return {
        ROOT: t(children={"sub_task": 2}),
        "sub_task": t(children={"thinking": 2}, prefills=[SUB_TASK_PREFILL]),
        "hypothesis": t(children={"thinking": 2}),
        "thinking": t(children={"double_check": 2, "thinking": 2}),
        "double_check": t(children={ANSWER: 1}),
        REFLECTION: t(children={"thinking_from_scratch": 2}, prefills=[REFLECTION_TEXT + close_tag(REFLECTION)]),
        "thinking_from_scratch": t(children={"thinking": 2}),
        "reclarify": t(children={"thinking": 2}),
        ANSWER: t(prefills=["The answer is:"]),
    }


@dataclass
class PolicyKeys:
    """The node policy's config keys (the mcts stage's Config and the eval's test-time search inherit them)."""
    granularity: str = "tagged"  # tagged | step | mini_step
    node_types: Dict[str, NodeTypeConfig] = field(default_factory=default_node_types)
    # ours: pattern name -> {node type -> {child type -> samples}}; non-empty = each tree draws one (docstring)
    transition_patterns: Dict[str, Dict[str, Dict[str, int]]] = field(default_factory=dict)
    max_node_tokens: int = at_least(1, default=64)
    max_depth: int = 16  # nodes below the root on any path
    step_samples: int = at_least(1, default=2)  # children per expansion in the step / mini_step granularities
    mini_step_tokens: int = 32


@dataclass
class TypeSpec:
    children: List[Tuple[str, int]]
    prefills: List[str]
    max_tokens: int
    special: bool


class Policy:
    def __init__(self, cfg):
        """cfg: the mcts stage config (granularity, node_types, max_node_tokens, max_depth, step_samples, ...)."""
        self.granularity = cfg.granularity
        self.max_depth = cfg.max_depth
        self.step_samples = cfg.step_samples
        self.mini_step_tokens = cfg.mini_step_tokens
        self.max_node_tokens = cfg.max_node_tokens
        self.types = {name: TypeSpec([(c, int(n)) for c, n in spec.children.items() if n > 0], list(spec.prefills),
                                     spec.max_tokens or cfg.max_node_tokens, bool(spec.special))
                      for name, spec in cfg.node_types.items()}
        self.raw_patterns = {name: {t: {c: int(n) for c, n in children.items()} for t, children in pattern.items()}
                             for name, pattern in (getattr(cfg, "transition_patterns", None) or {}).items()}
        self.patterns = {name: {t: [(c, n) for c, n in children.items() if n > 0] for t, children in pattern.items()}
                         for name, pattern in self.raw_patterns.items()}

    def problems(self) -> List[Tuple[str, str]]:
        """(config key, what is wrong) for every inconsistency; empty when the policy is usable."""
        out = []
        if self.granularity not in GRANULARITIES:
            out.append(("granularity", f"'{self.granularity}' is not one of {', '.join(GRANULARITIES)}"))
        for name in (ROOT, ANSWER, REFLECTION):
            if name not in self.types:
                out.append((f"node_types.{name}", "is required"))
        for name, spec in self.types.items():
            if name != ROOT and name not in NODE_TYPES:
                out.append((f"node_types.{name}", f"unknown node type (known: root, {', '.join(NODE_TYPES)})"))
            for child, _ in spec.children:
                if child not in self.types or child == ROOT:
                    out.append((f"node_types.{name}.children.{child}", "names no configured node type"))
        for name, pattern in self.patterns.items():
            for node_type, children in pattern.items():
                key = f"transition_patterns.{name}.{node_type}"
                if node_type not in self.types or node_type == ANSWER:
                    out.append((key, "names no configured node type that has children"))
                out += [(f"{key}.{child}", "names no configured node type") for child, _ in children
                        if child not in self.types or child == ROOT]
                out += [(f"{key}.{child}", f"must be >= 0 (is {n})")
                        for child, n in self.raw_patterns[name][node_type].items() if n < 0]
        if self.types.get(ANSWER) and self.types[ANSWER].children:
            out.append(("node_types.answer.children", "the answer is terminal: it cannot have children"))
        if self.max_depth < 2:
            out.append(("max_depth", f"must be at least 2 (is {self.max_depth})"))
        if self.granularity == "mini_step" and self.mini_step_tokens < 1:
            out.append(("mini_step_tokens", "must be positive (the v1 paper used 32 and 64)"))
        return out

    @property
    def tagged(self) -> bool:
        return self.granularity == "tagged"

    def draw_pattern(self, seed: int, problem_id: str) -> str:
        """The transition pattern of one tree ("" when none are configured): seeded by (seed, problem id) alone."""
        if not self.patterns:
            return ""
        return random.Random(derive_seed(seed, problem_id, "pattern")).choice(sorted(self.patterns))

    def expansions(self, node_type: str, depth: int, pattern: str = "") -> List[Tuple[str, int]]:
        """(child type, samples) for expanding a node of `node_type` at `depth` (root = 0) in a tree following
        `pattern` ("" = the matrix of node_types)."""
        if depth + 1 >= self.max_depth:
            return [(ANSWER, 1)]
        if self.tagged:
            override = self.patterns.get(pattern, {})
            return list(override[node_type] if node_type in override else self.types[node_type].children)
        return [(self.granularity, self.step_samples)]

    def is_tagged_child(self, child_type: str) -> bool:
        return self.tagged or child_type in (ANSWER, REFLECTION)

    def start_text(self, child_type: str, parent_text: str, parent_is_root: bool, prefill: str) -> str:
        """What a child's text begins with, before any generated token."""
        if not self.is_tagged_child(child_type):
            return ""
        sep = "" if parent_is_root or parent_text.endswith(SEGMENT_SEPARATOR) else SEGMENT_SEPARATOR
        return sep + open_tag(child_type) + prefill

    def self_closed_text(self, start: str) -> str:
        """The whole text of a child whose prefill closes its tag: in the step granularities it ends its step
        with the newline, like every generated step."""
        return start if self.tagged else start + SEGMENT_SEPARATOR

    def stops(self, child_type: str) -> Tuple[str, ...]:
        if self.is_tagged_child(child_type):
            return (close_tag(child_type),)
        if self.granularity == "step":
            return (SEGMENT_SEPARATOR, close_tag(ANSWER))
        return (close_tag(ANSWER),)

    def max_tokens(self, child_type: str) -> int:
        if self.is_tagged_child(child_type):
            return self.types[child_type].max_tokens
        if self.granularity == "mini_step":
            return self.mini_step_tokens
        return self.max_node_tokens

    def prefills(self, child_type: str) -> List[str]:
        return self.types[child_type].prefills if child_type in self.types and self.is_tagged_child(child_type) else []

    def closes_itself(self, child_type: str, prefill: str) -> bool:
        return self.is_tagged_child(child_type) and prefill.endswith(close_tag(child_type))

    def special(self, child_type: str) -> bool:
        return child_type in self.types and self.types[child_type].special

    def node_type(self, child_type: str, text: str) -> str:
        """The type recorded for a node: its tag in tagged segments; in step modes the last segment it opens."""
        if self.is_tagged_child(child_type):
            return child_type
        opened = _OPEN_TAG_RE.findall(text)
        return opened[-1] if opened else child_type

    @staticmethod
    def answer_closed(text: str) -> bool:
        return close_tag(ANSWER) in text

    @staticmethod
    def answer_open(text: str) -> bool:
        """The text opens an answer it does not close (a step that must not be split)."""
        return text.rfind(open_tag(ANSWER)) > text.rfind(close_tag(ANSWER))

    def answer_tail(self) -> Tuple[Tuple[str, ...], int]:
        """Stops and max tokens of the continuation that finishes an open answer."""
        return (close_tag(ANSWER),), self.types[ANSWER].max_tokens
