"""Alias of `marco-train eval` (marco_train/cli.py):
`torchrun launchers/eval.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]], prog="launchers/eval.py")
