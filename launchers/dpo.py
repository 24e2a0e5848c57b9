"""Alias of `marco-train dpo` (marco_train/cli.py):
`torchrun launchers/dpo.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["dpo", *sys.argv[1:]], prog="launchers/dpo.py")
