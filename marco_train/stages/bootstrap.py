"""Stage `bootstrap`: the toy world's base model.

By default it copies the committed checkpoint (marco_train/toy/checkpoint, with its recorded held-out
figures; found inside the installed package when the working directory has no such path: shipped.py) so the demo
starts in seconds. With `retrain=true` it rebuilds the tokenizer and trains a tiny
Qwen2-shaped model from scratch on tagged toy traces, deterministic from the seed. This is pre-training a
toy from random weights on an endless synthetic stream, so a 40-line loop is used rather than Trainer;
the real fine-tuning stages (sft, dpo) run on the HF Trainer machinery. The loop: marco_train/toy/pretrain.py.

Output: <stage dir>/model (model + tokenizer + record.json: steps, seed, held-out accuracy and no-answer rate).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from ..config import StageConfig, at_least, path_field
from ..models import model_dir
from ..toy import RECORD_FILE

KIND = "bootstrap"
INPUTS = ()


@dataclass
class Config(StageConfig):
    kind: str = KIND
    retrain: bool = False
    checkpoint: str = path_field("marco_train/toy/checkpoint")
    train_problems: str = path_field("mcts_data/problems/toy_train.jsonl")
    heldout_problems: str = path_field("mcts_data/problems/toy_heldout.jsonl")
    steps: int = at_least(1, default=500)  # the shipped checkpoint: 45.5% held-out accuracy (record.json)
    batch_size: int = at_least(1, default=32)
    learning_rate: float = at_least(0.0, default=3e-3)
    warmup_steps: int = at_least(1, default=100)
    error_rate: float = 0.15
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # head size 32: the smallest vLLM's CPU attention accepts
    num_kv_heads: int = 2
    intermediate_size: int = 384
    # >0: evaluate held-out and save snapshots/step-N every N steps (to choose `steps`)
    snapshot_every: int = at_least(0, default=0)
    eval_problems: int = at_least(0, default=200, hint="0 = all")
    max_new_tokens: int = at_least(1, default=256)


def unread_keys(cfg) -> tuple:
    """Keys this config does not read, kept out of the fingerprint: a copy reads only `checkpoint`; a retrain
    never reads it."""
    if cfg.retrain:
        return ("checkpoint",)
    own = {f.name for f in fields(StageConfig)} | {"retrain", "checkpoint"}
    return tuple(f.name for f in fields(Config) if f.name not in own)


def run(ctx) -> dict:
    cfg, out = ctx.cfg, model_dir(ctx.out_dir)
    if cfg.retrain:
        from ..toy.pretrain import retrain

        record = retrain(cfg, ctx.root.seed, out, ctx)
        ctx.log(f"held-out accuracy {record['accuracy']:.1%}, no-answer {record['no_answer_rate']:.1%}; "
                f"to ship it: cp {out}/* {cfg.checkpoint}/")
    else:
        if not Path(cfg.checkpoint, "config.json").exists():
            raise FileNotFoundError(f"stages.{ctx.name}.checkpoint: no model at '{cfg.checkpoint}' (neither here nor "
                                    f"among the package's shipped files); point it at a saved toy model or set "
                                    f"stages.{ctx.name}.retrain=true")
        shutil.copytree(cfg.checkpoint, out, dirs_exist_ok=True)
        record = json.loads((out / RECORD_FILE).read_text())
        ctx.log(f"using the shipped toy model (recorded held-out accuracy {record['accuracy']:.1%}, "
                f"no-answer {record['no_answer_rate']:.1%})")
    return {"record": record}
