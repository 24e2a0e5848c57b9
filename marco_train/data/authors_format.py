"""Reader for trees written by the authors' released Marco-o1 v2 tree-search engine (mcts_engine.print_tree).

One JSON file per tree: a list of nodes in DFS pre-order, each
`{node_id, node_action_name, total_reward, num_visits, total_children_num, parent_id, all_path_value,
is_terminal, node_value, children_ids, info}`. How it maps onto our Tree (mcts_data/README.md, "Authors' v2
format"):

- the root (parent_id null, action "base") holds the question in `node_value`; `info` (one dict shared by
  every node) holds `ground_truth`; the problem id is the file name without `.json`;
- `all_path_value` is the text from the root to the node, without the question. The engine ends every
  node's text with "\n", so a path's response is the terminal's `all_path_value` minus that one trailing
  newline (our responses end at the closing tag; the end-of-turn token follows). Node texts are the
  differences of `all_path_value` between a node and its parent, the terminal's without the newline, so the
  plain concatenation along a path is exactly that response;
- a terminal's 0/1 reward is re-counted on every visit, so correctness = total_reward / num_visits: 1 is
  correct, 0 is wrong, anything between (an evaluator that disagreed with itself) and unvisited terminals
  (num_visits 0) are unscored and left out;
- the predicted answer is the first `boxed{...}` in the terminal's text (the authors' evaluator's rule).

We write our own reader because the engine ships no loader; it uses only the json module (no pickle/eval).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..io import DataError, check_record
from .trees import Node, Tree

AUTHORS_FIELDS = ("node_id", "node_action_name", "total_reward", "num_visits", "parent_id", "all_path_value",
                  "is_terminal", "node_value")
BOXED_RE = re.compile(r"boxed{(.*)}")


def _number(at: str, raw: dict, name: str) -> float:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{at}: field '{name}' must be a number, got {value!r:.60}")
    return value


def read_authors_tree(path: str | Path) -> Tree:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of nodes (the authors' v2 tree format)")
    raws = {}
    for i, raw in enumerate(data):
        at = f"{path}: nodes[{i}]"
        check_record(at, raw, AUTHORS_FIELDS, has="authors' v2 nodes have")
        if not isinstance(raw["node_id"], int) or raw["node_id"] in raws:
            raise DataError(f"{at}: field 'node_id' must be a unique integer, got {raw['node_id']!r}")
        for name in ("all_path_value", "node_value"):
            if not isinstance(raw[name], str):
                raise DataError(f"{at}: field '{name}' must be a string, got {raw[name]!r:.60}")
        raws[raw["node_id"]] = (at, raw)
    roots = [r for _, r in raws.values() if r["parent_id"] is None]
    if len(roots) != 1:
        raise DataError(f"{path}: expected exactly one root node (parent_id null), found {len(roots)}")
    root = roots[0]
    info = root.get("info") if isinstance(root.get("info"), dict) else {}
    if "ground_truth" not in info:
        raise DataError(f"{path}: root node (node_id {root['node_id']}): missing field 'info.ground_truth'")
    truth = info["ground_truth"]
    truth = truth if isinstance(truth, str) else json.dumps(truth, sort_keys=True)

    nodes = {}
    for node_id, (at, raw) in raws.items():
        at = f"{at} (node_id {node_id})"
        parent = raw["parent_id"]
        visits, reward = _number(at, raw, "num_visits"), _number(at, raw, "total_reward")
        terminal = raw["is_terminal"]
        if not isinstance(terminal, bool):
            raise DataError(f"{at}: field 'is_terminal' must be true or false, got {terminal!r}")
        if parent is None:
            text = ""
        else:
            if parent not in raws:
                raise DataError(f"{at}: field 'parent_id' names unknown node {parent!r}")
            before = raws[parent][1]["all_path_value"]
            if not raw["all_path_value"].startswith(before):
                raise DataError(f"{at}: field 'all_path_value' does not extend its parent's (node_id {parent}); "
                                f"not a tree of the authors' engine?")
            text = raw["all_path_value"][len(before):]
            if terminal:
                text = text.removesuffix("\n")
        correct = None
        if terminal and visits > 0:
            ratio = reward / visits
            correct = True if abs(ratio - 1) < 1e-9 else False if abs(ratio) < 1e-9 else None
        boxed = BOXED_RE.findall(raw["node_value"]) if terminal else []
        kind = "root" if parent is None else str(raw["node_action_name"])
        nodes[node_id] = Node(id=node_id, parent=parent, type=kind,
                              text=text, is_terminal=terminal, correct=correct,
                              answer=boxed[0].strip() if boxed else None, visits=int(visits))
    return Tree(path.stem, root["node_value"], truth, nodes, str(path))
