"""Alias of `marco-train run` (marco_train/cli.py), the whole DAG:
`python launchers/pipeline.py --config configs/demo.yaml [key=value ...]`."""

import sys

from marco_train.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]], prog="launchers/pipeline.py")
