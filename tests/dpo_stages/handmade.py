"""A stand-in for split + sft in dpo tests: writes <dir>/pairs (split's schema) and <dir>/model (a tiny random Qwen2).

Pairs are toy problems with a correct chosen path and a wrong rejected one (tests/dpo_testlib.py).
"""

from dataclasses import dataclass

from marco_train import dist
from marco_train.config import StageConfig

KIND = "dpo_stages.handmade"
INPUTS = ()


@dataclass
class Config(StageConfig):
    kind: str = KIND
    n_pairs: int = 8
    model_seed: int = 0
    hidden_size: int = 32
    layers: int = 2


def run(ctx):
    from dpo_testlib import save_model, save_pairs, tiny_model, toy_pairs
    from marco_train.models import load_tokenizer

    if dist.is_main():
        tokenizer = load_tokenizer("marco_train/toy/checkpoint")
        save_pairs(toy_pairs(tokenizer, ctx.cfg.n_pairs, seed=ctx.root.seed), ctx.out_dir)
        (ctx.out_dir / "summary.json").write_text('{"task": "toy"}\n')  # as the split stage records it
        model = tiny_model(tokenizer, ctx.cfg.model_seed, ctx.cfg.hidden_size, ctx.cfg.layers)
        save_model(model, tokenizer, ctx.out_dir)
    dist.barrier()
    return {"pairs": ctx.cfg.n_pairs}
