"""Alias of `marco-train bootstrap` (marco_train/cli.py):
`torchrun launchers/bootstrap.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["bootstrap", *sys.argv[1:]], prog="launchers/bootstrap.py")
