"""Entry point: see `marco_train.cli`.

Usage: `torchrun launchers/bootstrap.py --config configs/demo.yaml [key=value ...]`.
"""

from marco_train.cli import stage_main

if __name__ == "__main__":
    stage_main("bootstrap")
