"""Alias of `marco-train show-tree` (marco_train/cli.py): print one MCTS tree indented:
`python launchers/show_tree.py runs/demo/mcts-<fp> [--id PROBLEM_ID] [--width 80]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["show-tree", *sys.argv[1:]], prog="launchers/show_tree.py")
