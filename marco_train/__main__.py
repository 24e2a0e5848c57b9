"""`python -m marco_train <command> ...`: the `marco-train` command (marco_train/cli.py); the DAG runner launches
multi-rank stages as `torchrun ... -m marco_train stage ...`."""

from .cli import main

if __name__ == "__main__":
    main()
