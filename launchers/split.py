"""Alias of `marco-train split` (marco_train/cli.py):
`torchrun launchers/split.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["split", *sys.argv[1:]], prog="launchers/split.py")
