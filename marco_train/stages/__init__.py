"""One module per stage kind (bootstrap, cot, mcts, split, sft, dpo, eval); see docs/architecture.md.

A stage module reads top to bottom: its docstring (inputs, outputs, why), `Config` (a StageConfig subclass),
the plan-time checks (`check_config(cfg, prefix, where)`, optional), then `run(ctx) -> summary dict`. It also
defines KIND and INPUTS, optionally RESUMABLE, EXTRA_RUNTIME_KEYS, canonical_config(dict), READS ({input name:
paths it reads in that upstream stage's directory}: a finished upstream missing one stops the stage before it
runs, naming it and the --force to run) and `unread_keys(cfg)` (keys this config does not read, kept out of the
fingerprint). Its code is fingerprinted by
hashing its import closure (marco_train/code_hash.py), so there is no version constant to bump.

INPUTS = {input name: None (required) or the config key that may stand in for it}, e.g.
{"data": None, "model": "model.name_or_path"}; a tuple of names means all of them required. The planner checks
them once (`check_inputs`), with the file and line of the stage.

The one import rule: the planner imports every stage module (also for --dry-run), so a stage module's top
level imports only light modules (config, io, dist, models, tasks, data, mcts, engines' registry ...), never
torch, transformers, trl, datasets or peft; `run()` imports the heavy library modules (train/, eval/, toy/,
engines' implementations), which import theirs at the top. tests/test_stage_imports.py holds the line.
"""

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf

from ..config import ConfigError

# For the error when neither an input nor the key standing in for it is set: what each names.
INPUT_HINTS = {"model": "a stage that saves a model", "trees": "an mcts stage", "data": "a split stage"}
KEY_HINTS = {"model.name_or_path": "a hub name or directory", "trees_dir": "tree files made elsewhere",
             "dataset.name_or_path": "your own file or hub dataset, TRL or LLaMA-Factory format"}


def check_inputs(module, cfg, label: str, prefix: str, where) -> None:
    """A stage module's INPUTS against its validated config `cfg`; errors name `where(prefix)` (file:line)."""
    declared = getattr(module, "INPUTS", ())
    for needed, stand_in in (declared if isinstance(declared, dict) else dict.fromkeys(declared)).items():
        if needed in cfg.inputs or (stand_in and OmegaConf.select(cfg, stand_in)):
            continue
        if stand_in is None:
            raise ConfigError(f"{where(prefix)}: {label} needs inputs.{needed}: <stage name>")
        raise ConfigError(f"{where(prefix)}: {prefix}: set inputs.{needed} ({INPUT_HINTS.get(needed, 'a stage')}) "
                          f"or {stand_in}" + (f" ({KEY_HINTS[stand_in]})" if stand_in in KEY_HINTS else ""))


def unknown_upstream(module, input_name: str, value: str) -> str:
    """The error for inputs.<input_name> naming no stage instance, pointing to the key that takes a path or hub
    name instead (e.g. inputs.data=my_pairs.jsonl -> dataset.name_or_path)."""
    declared = getattr(module, "INPUTS", ())
    stand_in = declared.get(input_name) if isinstance(declared, dict) else None
    msg = f"inputs.{input_name} names unknown stage '{value}'"
    if stand_in:
        msg += (f"; inputs name stage instances of this config; for a file, directory or hub name remove "
                f"inputs.{input_name} and set {stand_in}={value}" +
                (f" ({KEY_HINTS[stand_in]})" if stand_in in KEY_HINTS else ""))
    return msg


def check_deepspeed(cfg, prefix: str, where) -> None:
    """A training stage's training.deepspeed names a DeepSpeed JSON that exists (configs/deepspeed/zero3.json; the
    planner has looked it up among the shipped files already), and DeepSpeed (the `deepspeed` extra) is installed."""
    value, key = cfg.training.deepspeed, f"{prefix}.training.deepspeed"
    if value and not Path(value).is_file():
        raise ConfigError(f"{where(key)}: {key}: file '{value}' not found (see configs/deepspeed/)")
    if value and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{where(key)}: {key}: DeepSpeed is not installed: pip install 'marco-train[deepspeed]' "
                          f"(or unset training.deepspeed)")
