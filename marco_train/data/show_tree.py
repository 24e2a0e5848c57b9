"""Print a tree record indented: id (xK: K identical sibling samples merged into it), type, visits N, mean
value Q/N, confidence, the terminal's verdict, text excerpt.

    marco-train show-tree runs/demo/mcts-<fp> [--id toy-t00003] [--width 80]   (or launchers/show_tree.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import shipped
from .trees import Tree, read_tree_files


def format_tree(tree: Tree, width: int = 80) -> str:
    children = {}
    for node in sorted(tree.nodes.values(), key=lambda n: n.id):
        children.setdefault(node.parent, []).append(node)
    meta = tree.meta
    lines = [f"{tree.problem_id}: {tree.question}  (ground truth {tree.answer}; {meta.get('iterations', '?')} "
             f"iterations, {meta.get('correct_terminals', '?')} correct answers, {meta.get('stop_reason', '?')})"]

    def walk(node, depth: int) -> None:
        mean = node.value / node.visits if node.visits else 0.0
        conf = "    -" if node.confidence is None else f"{node.confidence:.3f}"
        verdict = ("  RIGHT" if node.correct else "  WRONG") if node.is_terminal else ""
        text = node.text.replace("\n", "\\n")
        text = text if len(text) <= width else text[:width - 3] + "..."
        samples = f" x{node.samples}" if node.samples > 1 else ""  # sibling samples merged into it
        lines.append(f"{'  ' * depth}[{node.id}]{samples} {node.type:<12} N={node.visits:<3} Q/N={mean:.2f} "
                     f"c={conf}{verdict}  {text}")
        for child in children.get(node.id, []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return "\n".join(lines)


def main(argv=None, prog: str = "marco-train show-tree") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("path", help="an mcts stage directory, its trees/ directory or one shard .jsonl")
    p.add_argument("--id", help="problem id (default: the first tree)")
    p.add_argument("--width", type=int, default=80, help="characters of node text to show")
    args = p.parse_args(argv)
    for tree in read_tree_files(Path(shipped.locate(args.path))):  # e.g. mcts_data/examples/toy_trees.jsonl
        if args.id is None or tree.problem_id == args.id:
            print(format_tree(tree, args.width))
            return
    raise SystemExit(f"{args.path}: no tree" + (f" with problem id '{args.id}'" if args.id else ""))
