"""Alias of `marco-train mcts` (marco_train/cli.py):
`torchrun launchers/mcts.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["mcts", *sys.argv[1:]], prog="launchers/mcts.py")
