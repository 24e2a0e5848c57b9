"""Run an ablation grid and print the paper-layout table.

Usage: `python launchers/ablate.py --config configs/ablations/paper.yaml`.
"""

from marco_train.cli import ablate_main

if __name__ == "__main__":
    ablate_main()
