"""Look at search trees: one indented as text (id, xK: K identical sibling samples merged into it, type, visits
N, mean value Q/N, confidence, the terminal's verdict, text excerpt, the split's marks), a one-line list of many,
or one self-contained HTML page (data/tree_html.py).

    marco-train show-tree runs/demo/mcts-<fp> [--id toy-t00003] [--width 80]   (or launchers/show_tree.py)
    marco-train show-tree runs/demo/mcts-<fp> --list --solved --with-reflection
    marco-train show-tree runs/demo/split-<fp> --html trees.html     # marks SFT / chosen / rejected paths

PATH is an mcts stage directory, its trees/ directory, one .jsonl shard or the authors' v2 .json files; a split
stage directory shows the trees it was made from with the paths it picked marked (or give `--split DIR`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .. import shipped
from ..io import DataError
from .tree_view import PathMarks, children_of, list_line, load_trees, select, split_source, summarize_tree
from .trees import Tree

MARK_LABELS = {"sft": "SFT", "chosen": "CHOSEN", "rejected": "REJECTED"}


def format_tree(tree: Tree, width: int = 80, marks: Optional[PathMarks] = None) -> str:
    children = children_of(tree)
    node_marks = marks.node_marks(tree) if marks else {}
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
        marked = "".join(f" <{MARK_LABELS[m]}>" for m in node_marks.get(node.id, []))
        lines.append(f"{'  ' * depth}[{node.id}]{samples} {node.type:<12} N={node.visits:<3} Q/N={mean:.2f} "
                     f"c={conf}{verdict}{marked}  {text}")
        for child in children.get(node.id, []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return "\n".join(lines)


def main(argv=None, prog: str = "marco-train show-tree") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[3:]))
    p.add_argument("path", help="an mcts or split stage directory, a trees/ directory, a .jsonl shard or .json files")
    p.add_argument("--id", help="one problem id (default: the first tree that passes the filters)")
    p.add_argument("--list", action="store_true", help="one line per tree (nodes, depth, answers, reflections)")
    p.add_argument("--solved", action="store_true", help="only trees with a right answer")
    p.add_argument("--failed", action="store_true", help="only trees without a right answer")
    p.add_argument("--with-reflection", action="store_true", help="only trees with a reflection node")
    p.add_argument("--split", help="a split stage directory: mark the SFT / chosen / rejected paths it picked")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML page of the trees shown")
    p.add_argument("--width", type=int, default=None, help="characters of node text (text 80, html 2000)")
    args = p.parse_args(argv)
    if args.solved and args.failed:
        p.error("--solved and --failed exclude each other")
    try:
        show(args)
    except (DataError, OSError) as e:  # as the other commands do: one line, exit code 2
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(2)


def show(args) -> None:
    path = Path(shipped.locate(args.path))  # e.g. mcts_data/examples/toy_trees.jsonl
    split_dir = args.split or (str(path) if split_source(path) is not None else None)
    marks = PathMarks.from_split(split_dir) if split_dir else None
    trees = select(load_trees(path), solved=args.solved, failed=args.failed, with_reflection=args.with_reflection,
                   problem_id=args.id)
    if not trees:
        wanted = [f for f in ("solved", "failed", "with_reflection") if getattr(args, f)]
        raise DataError(f"{path}: no tree" + (f" with problem id '{args.id}'" if args.id else "")
                        + (f" passing --{' --'.join(w.replace('_', '-') for w in wanted)}" if wanted else ""))
    if args.html:
        from ..io import atomic_write_text
        from .tree_html import page

        atomic_write_text(Path(args.html), page(trees, title=f"trees of {path}", marks=marks,
                                                width=args.width or 2000))
        print(f"wrote {args.html} ({len(trees)} trees)")
    elif args.list:
        for tree in trees:
            print(list_line(summarize_tree(tree, marks)))
        print(f"{len(trees)} trees")
    else:
        print(format_tree(trees[0], args.width or 80, marks))
