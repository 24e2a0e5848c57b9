"""Alias of `marco-train ablate` (marco_train/cli.py): run an ablation grid and print the paper-layout table.

Usage: `python launchers/ablate.py --config configs/ablations/paper.yaml`.
"""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["ablate", *sys.argv[1:]], prog="launchers/ablate.py")
