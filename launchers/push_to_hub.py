"""Upload a finished stage's output to the hub: `python launchers/push_to_hub.py <stage dir> --repo NAME [--private]`
(a split stage's exported data sets, or an sft/dpo stage's model with its card; see `marco_train.cli.push_main`)."""

from marco_train.cli import push_main

if __name__ == "__main__":
    push_main()
