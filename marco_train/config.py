"""Config loading: OmegaConf YAML + `key=value` overrides, validated against typed dataclass schemas.

OmegaConf's structured configs already reject unknown keys and wrong types; this module only turns
their errors into ones that name the file, the line and the key, and finds missing values up front.
Each stage kind defines its own schema (a subclass of `StageConfig`) next to its code.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config problem; the message names the file (and line) and the key."""


@dataclass
class WandbConfig:
    project: str = "marco-train"
    entity: Optional[str] = None
    # online | offline | disabled; the WANDB_MODE environment variable wins.
    mode: str = "offline"


@dataclass
class PipelineConfig:
    experiment: str = MISSING
    runs_dir: str = "runs"
    seed: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # name -> stage instance; each validated against its kind's schema by the pipeline.
    stages: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StageConfig:
    """Keys every stage instance has."""
    kind: str = MISSING
    # input name -> upstream stage instance name, e.g. {model: sft}.
    inputs: Dict[str, str] = field(default_factory=dict)
    # 1 runs in-process; more launches `torchrun --nproc_per_node N launchers/<kind>.py`.
    nproc_per_node: int = 1
    nnodes: int = 1
    log_every: int = 10


def path_field(default: Any = MISSING, **kw):
    """A config field naming a file or directory: its *content* goes into the stage fingerprint."""
    return field(default=default, metadata={"input_path": True}, **kw)


@dataclass
class ModelConfig:
    # Hub name (e.g. Qwen/Qwen2.5-7B-Instruct) or local directory; empty = the `model` input's directory.
    name_or_path: str = ""
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16 | fp16
    attn_implementation: str = "auto"  # auto (flash_attention_2 if installed on CUDA, else sdpa) | sdpa | eager | ...
    trust_remote_code: bool = False


@dataclass
class TrainingConfig:
    """Optimisation keys shared by the training stages. The *global* batch is fixed; accumulation is derived."""
    global_batch_size: int = 32
    per_device_batch_size: int = 8
    learning_rate: float = 1e-5
    max_steps: int = -1  # -1: epochs decide
    epochs: float = 1.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_length: int = 2048
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: Optional[bool] = None  # None: off on CPU, on on GPU
    save_steps: int = 0  # 0: only the final save
    deepspeed: Optional[str] = None  # path to a DeepSpeed JSON (configs/deepspeed/zero3.json)


@dataclass
class LoraConfig:
    """LoRA (peft) keys of the training stages; the sft stage adds `merge` (the dpo stage always saves merged
    full weights, which is what eval loads). Set up by train/lora.py."""
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])


def _line_index(text: str) -> Dict[str, int]:
    """Map dotted key paths to 1-based YAML line numbers, for error messages."""
    index: Dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                index[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix}[{i}]")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return index


@dataclass
class Source:
    """Where a config came from, to point errors at the right place."""
    file: str
    lines: Dict[str, int]
    overrides: List[str]

    def where(self, key: str) -> str:
        for o in self.overrides:
            if o.split("=", 1)[0].lstrip("+~") == key:
                return f"command-line override '{o}'"
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.file}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.file


def load_raw(path, overrides: List[str] = ()):
    """Read YAML, apply `key=value` overrides; no schema yet."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        cfg = OmegaConf.create(yaml.safe_load(text) or {})
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    source = Source(str(path), _line_index(text), list(overrides))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value (e.g. stages.dpo.beta=0.2)")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"command-line overrides: {e}") from None
    return _apply_includes(cfg, source), source


def _apply_includes(cfg, source: "Source"):
    """A stage may say `include: <yaml>` (or a list of them), e.g. a model preset from configs/models/: the
    files' keys are merged under the stage first, and the stage's own keys (and overrides) win."""
    for name, node in list((cfg.get("stages") or {}).items()):
        if not isinstance(node, DictConfig) or "include" not in node:
            continue
        files = node.include if isinstance(node.include, (list, ListConfig)) else [node.include]
        merged = OmegaConf.create()
        for f in files:
            if not Path(str(f)).is_file():
                raise ConfigError(f"{source.where(f'stages.{name}.include')}: stages.{name}.include: file '{f}' not "
                                  f"found (presets live in configs/models/)")
            try:
                merged = OmegaConf.merge(merged, OmegaConf.create(yaml.safe_load(Path(str(f)).read_text()) or {}))
            except (yaml.YAMLError, OmegaConfBaseException) as e:
                raise ConfigError(f"{f}: not a valid include file ({e})") from None
        own = OmegaConf.masked_copy(node, [k for k in node if k != "include"])
        cfg.stages[name] = OmegaConf.merge(merged, own)
    return cfg


def validate(schema: type, node: Any, prefix: str, source: Source, label: str = "") -> DictConfig:
    """Merge `node` into the typed schema; unknown keys, wrong types and missing values name key and file."""
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        full = f"{prefix}.{key}" if prefix and key else (prefix or key)
        if "not in struct" in str(e) or type(e).__name__ == "ConfigKeyError":
            known = ", ".join(f.name for f in dataclasses.fields(schema))
            raise ConfigError(f"{source.where(full)}: unknown key '{full}' for {label or schema.__name__} "
                              f"(known keys: {known}); fix the spelling or remove it") from None
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source.where(full)}: bad value for '{full}': {msg}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        full = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(f"{source.where(full)}: missing value for '{full}'; set it in the file or as {full}=...")
    return merged


def input_path_keys(schema: type, prefix: str = "") -> List[str]:
    """Dotted keys of fields declared with `path_field` (recursing into nested dataclasses)."""
    keys = []
    for f in dataclasses.fields(schema):
        if f.metadata.get("input_path"):
            keys.append(prefix + f.name)
        elif isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
            keys.extend(input_path_keys(f.type, prefix + f.name + "."))
    return keys


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
