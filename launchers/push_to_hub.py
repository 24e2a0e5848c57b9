"""Alias of `marco-train push-to-hub` (marco_train/cli.py): upload a finished stage's output to the hub:
`python launchers/push_to_hub.py <stage dir> --repo NAME [--private]` (a split stage's exported data sets, or an
sft/dpo stage's model with its card)."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["push-to-hub", *sys.argv[1:]], prog="launchers/push_to_hub.py")
