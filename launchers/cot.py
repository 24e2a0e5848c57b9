"""Alias of `marco-train cot` (marco_train/cli.py):
`torchrun launchers/cot.py --config configs/smollm2.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["cot", *sys.argv[1:]], prog="launchers/cot.py")
