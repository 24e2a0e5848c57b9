"""A stage that makes the console noise tests/test_console.py looks for: one of our lines per rank, a warning of
ours from rank 1, a Python warning on every rank, a transformers warning, a datasets progress bar."""

import warnings
from dataclasses import dataclass

from marco_train import dist
from marco_train.config import StageConfig

KIND = "probe_stages.noisy"
CODE_VERSION = 1
INPUTS = ()


@dataclass
class Config(StageConfig):
    kind: str = KIND


def run(ctx):
    from datasets import Dataset
    from transformers.utils import logging as transformers_logging

    ctx.log(f"hello from rank {dist.rank()}")
    if dist.rank() == 1:
        dist.warn("a warning of ours from rank 1")
    warnings.warn("a library's UserWarning", UserWarning)
    transformers_logging.get_logger("transformers.modeling_utils").warning("transformers noise")
    Dataset.from_dict({"x": list(range(50))}).map(lambda row: row, desc="a datasets bar")
    return {"rank": dist.rank()}
