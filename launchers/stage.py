"""Alias of `marco-train stage` (marco_train/cli.py), any one stage instance by name:
`torchrun launchers/stage.py --config configs/demo.yaml --stage NAME [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["stage", *sys.argv[1:]], prog="launchers/stage.py")
