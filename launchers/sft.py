"""Alias of `marco-train sft` (marco_train/cli.py):
`torchrun launchers/sft.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["sft", *sys.argv[1:]], prog="launchers/sft.py")
