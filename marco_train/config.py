"""Config loading: OmegaConf YAML + `key=value` overrides, validated against typed dataclass schemas.

OmegaConf's structured configs already reject unknown keys and wrong types; this module only turns
their errors into ones that name the file, the line and the key, and finds missing values up front.
Each stage kind defines its own schema (a subclass of `StageConfig`) next to its code. Value rules a type
cannot say are declared on the field and checked here for every schema at plan time: `at_least(low, default)`
(sizes, counts: a negative `num_problems` is refused, not taken as a Python slice) and `checked(default, fn)`
(`fn(value, section) -> message | None`, e.g. a known task name, an existing problem file).
"""

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import shipped
from .extra_args import check as check_extra_args
from .tracking import WandbConfig


class ConfigError(ValueError):
    """A config problem; the message names the file (and line) and the key."""


class StageError(RuntimeError):
    """A stage cannot start or did not finish, for the reason its message states (the pipeline raises it)."""


def at_least(low, *, default: Any = dataclasses.MISSING, hint: str = "", **kw):
    """A numeric field (or list of numbers) refused below `low` at plan time; `hint` says what values mean."""
    return field(default=default, metadata={"min": low, "hint": hint}, **kw)


def checked(default: Any, check: Callable[[Any, Any], Optional[str]], **kw):
    """A field whose value `check(value, section)` must accept at plan time (it returns what is wrong, or None)."""
    return field(default=default, metadata={"check": check}, **kw)


def hub_model_check(value, section=None) -> Optional[str]:
    """A field check (see `checked`): offline, a hub model name must be in the local cache."""
    from .models import hub_model_problem

    return hub_model_problem(value)


@dataclass
class PipelineConfig:
    experiment: str = MISSING
    runs_dir: str = "runs"
    seed: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # name -> stage instance; each validated against its kind's schema by the pipeline.
    stages: Dict[str, Any] = field(default_factory=dict)
    # name -> result table of an ablation grid (rows mapped onto eval stages); checked by eval/tables.py
    tables: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StageConfig:
    """Keys every stage instance has."""
    kind: str = MISSING
    # input name -> upstream stage instance name, e.g. {model: sft}.
    inputs: Dict[str, str] = field(default_factory=dict)
    # 1 runs in-process; more launches `torchrun --nproc_per_node N -m marco_train stage ...`.
    nproc_per_node: int = at_least(1, default=1)
    nnodes: int = at_least(1, default=1)
    log_every: int = at_least(1, default=10)
    # seconds a collective waits for the other ranks before failing (torch's default is 30 min): a lost node
    # then ends the job with an error naming the lost rank instead of hanging it (dist.py)
    dist_timeout_s: int = at_least(1, default=1800)


def path_field(default: Any = MISSING, check: Optional[Callable[[Any, Any], Optional[str]]] = None, **kw):
    """A config field naming a file or directory (or a hub id): its *content* (a hub id: its cached revision)
    goes into the stage fingerprint, unless the stage's `unread_keys` says this config does not read it. A relative
    path missing from the working directory is looked up among the shipped files (shipped.py), before `check`."""
    return field(default=default, metadata={"input_path": True, "shipped": True, "check": check}, **kw)


@dataclass
class ModelConfig:
    # Hub name (e.g. Qwen/Qwen2.5-7B-Instruct) or local directory; empty = the `model` input's directory.
    # Offline (HF_HUB_OFFLINE=1), a hub name must be in the local cache (checked at plan time).
    name_or_path: str = path_field("", hub_model_check)
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16 | fp16
    attn_implementation: str = "auto"  # auto (flash_attention_2 if installed on CUDA, else sdpa) | sdpa | eager | ...
    trust_remote_code: bool = False


@dataclass
class TrainingConfig:
    """Optimisation keys shared by the training stages. The *global* batch is fixed; accumulation is derived."""
    global_batch_size: int = at_least(1, default=32, hint="a multiple of per_device_batch_size x world size")
    per_device_batch_size: int = at_least(1, default=8)
    learning_rate: float = at_least(0.0, default=1e-5)
    max_steps: int = at_least(-1, default=-1, hint="-1: epochs decide")
    epochs: float = at_least(0.0, default=1.0)
    warmup_ratio: float = checked(0.0, lambda v, _: None if 0 <= v < 1 else f"{v} is not in [0, 1)")
    weight_decay: float = at_least(0.0, default=0.0)
    max_length: int = at_least(1, default=2048)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: Optional[bool] = None  # None: off on CPU, on on GPU
    save_steps: int = at_least(0, default=0, hint="0: only the final save")
    # Complete checkpoints kept in <stage dir>/checkpoints (the newest; older ones go once a newer one is complete,
    # so a crash always leaves one to resume from).
    save_total_limit: int = at_least(0, default=1, hint="0 keeps all")
    # When the stage finishes its checkpoints keep only weights and trainer_state.json: the optimizer, scheduler
    # and RNG state (at 7B under ZeRO-3 ~100 GB a checkpoint) and training_args.bin go. true keeps them.
    keep_optimizer_state: bool = False
    deepspeed: Optional[str] = path_field(None)  # a DeepSpeed JSON (configs/deepspeed/); stages.check_deepspeed
    # further TrainingArguments keys (lr_scheduler_type, optim, ...); the stage's own are refused (extra_args.py)
    extra_args: Dict[str, Any] = field(default_factory=dict, metadata={"check": check_extra_args})


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
        keys = [o.split("=", 1)[0].lstrip("+~") for o in self.overrides]
        for o, k in zip(self.overrides, keys):  # the key itself, else (a key the file lacks) one set under it
            if k == key or (key not in self.lines and k.startswith(key + ".")):
                return f"command-line override '{o}'"
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.file}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.file


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config with one is refused, naming both lines."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            key = key_node.value
            if key in first and key != "<<":
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {first[key] + 1}); keep one",
                    key_node.start_mark)
            first.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep)


def _yaml_file(path: Path, what: str = "not valid YAML"):
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    try:
        return text, yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: {what} ({getattr(e, 'problem', e)})") from None


def _parse_overrides(overrides: List[str]) -> DictConfig:
    merged = OmegaConf.create()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override '{item}': expected key=value (e.g. stages.dpo.beta=0.2)")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as e:
            raise ConfigError(f"command-line override '{item}': the value is not valid YAML "
                              f"({getattr(e, 'problem', e)}); close the bracket or quote the value") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"command-line override '{item}': {str(e).splitlines()[0]}") from None
    return merged


def _check_shape(cfg: DictConfig, path: Path, source: "Source") -> None:
    """A model preset given as the pipeline config, `stages` that is not a mapping, a stage that is not one."""
    if "stages" not in cfg and {"model", "training"} & set(cfg):
        raise ConfigError(f"{path}: this is a model preset (keys {', '.join(sorted(cfg))}), not a pipeline config: "
                          f"add `include: {path}` to a training stage of a pipeline config (e.g. configs/demo.yaml) "
                          f"and pass that to --config")
    stages = cfg.get("stages")
    if stages is not None and not isinstance(stages, DictConfig):
        raise ConfigError(f"{source.where('stages')}: 'stages' must map stage names to their keys "
                          f"(e.g. stages.dpo.beta=0.2), not {stages!r}")
    for name, node in (stages or {}).items():
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{source.where(f'stages.{name}')}: stage '{name}' must be a mapping of its keys "
                              f"(kind, inputs, ...), not {node!r}; set a key of it, e.g. stages.{name}.<key>=...")


def load_raw(path, overrides: List[str] = ()):
    """Read YAML, apply `key=value` overrides; no schema yet. A path missing here may name a shipped config."""
    path = Path(shipped.config_file(str(path)))
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a directory)" if path.is_dir() else ""))
    text, data = _yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline config is a mapping (experiment, stages, ...), not "
                          f"{type(data).__name__}")
    cfg = OmegaConf.create(data)
    source = Source(str(path), _line_index(text), list(overrides))
    try:
        cfg = OmegaConf.merge(cfg, _parse_overrides(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"command-line overrides: {str(e).splitlines()[0]}") from None
    _check_shape(cfg, path, source)
    return _apply_includes(cfg, source), source


def _apply_includes(cfg, source: "Source"):
    """A stage may say `include: <yaml>` (or a list of them), e.g. a model preset from configs/models/: the
    files' keys are merged under the stage first, and the stage's own keys (and overrides) win."""
    for name, node in list((cfg.get("stages") or {}).items()):
        if "include" not in node:
            continue
        files = node.include if isinstance(node.include, (list, ListConfig)) else [node.include]
        merged = OmegaConf.create()
        for f in map(shipped.locate, map(str, files)):
            if not Path(f).is_file():
                raise ConfigError(f"{source.where(f'stages.{name}.include')}: stages.{name}.include: file '{f}' not "
                                  f"found (presets live in configs/models/)")
            _, data = _yaml_file(Path(f), "not a valid include file")
            try:
                merged = OmegaConf.merge(merged, OmegaConf.create(data))
            except OmegaConfBaseException as e:
                raise ConfigError(f"{f}: not a valid include file ({e})") from None
        own = OmegaConf.masked_copy(node, [k for k in node if k != "include"])
        cfg.stages[name] = OmegaConf.merge(merged, own)
    return cfg


def _section(schema: type, key: str) -> type:
    """The dataclass of the section holding dotted `key` (relative to `schema`), for error messages."""
    section, parts, i = schema, key.split(".")[:-1], 0
    while i < len(parts):
        try:
            step = typing.get_type_hints(section).get(parts[i])
        except (NameError, TypeError):
            break
        if typing.get_origin(step) in (dict, Dict) and i + 1 < len(parts):  # a dict of sections: skip the name
            step, i = typing.get_args(step)[1], i + 1
        if not dataclasses.is_dataclass(step):
            break
        section, i = step, i + 1
    return section


def _unknown_key(schema: type, key: str, full: str, label: str, where: str) -> ConfigError:
    section = _section(schema, key)
    known = [f.name for f in dataclasses.fields(section)]
    name = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(name, known, n=1)
    owner = full.rsplit(".", 1)[0] if "." in key else ""
    what = f"'{owner}'" if owner else (label or section.__name__)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return ConfigError(f"{where}: unknown key '{full}' for {what} (its keys: {', '.join(known)}); {hint}"
                       f"fix the spelling or remove it")


def _values(key: str, value) -> List[tuple]:
    """(key, value) of a field, of each item of a list, or of each entry of a dict of numbers (for `at_least`)."""
    if isinstance(value, (list, ListConfig)):
        return [(key, v) for v in value]
    if isinstance(value, DictConfig) and not dataclasses.is_dataclass(OmegaConf.get_type(value)):
        return [(f"{key}.{k}", v) for k, v in value.items()]
    return [(key, value)]


def check_fields(schema: type, node: DictConfig, prefix: str, where: Callable[[str], str]) -> None:
    """The rules declared on `schema`'s fields (`at_least`, `checked`), through nested sections and dicts of them."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = node.get(f.name)
        low = f.metadata.get("min")
        if low is not None:
            for item, v in _values(key, value):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v < low:
                    hint = f" ({f.metadata['hint']})" if f.metadata.get("hint") else ""
                    raise ConfigError(f"{where(item)}: {item}={v}: must be >= {low}{hint}")
        check = f.metadata.get("check")
        problem = check(value, node) if check else None
        if problem:
            raise ConfigError(f"{where(key)}: {key}: {problem}")
        if isinstance(value, DictConfig):  # a section, or a dict of sections (e.g. node_types)
            nested = {key: value} if dataclasses.is_dataclass(OmegaConf.get_type(value)) else \
                {f"{key}.{k}": v for k, v in value.items()}
            for sub_key, sub in nested.items():
                if isinstance(sub, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(sub)):
                    check_fields(OmegaConf.get_type(sub), sub, sub_key, where)


def gradient_accumulation(global_batch_size: int, per_device_batch_size: int, world_size: int, world: str = "") -> int:
    """global / (per-device batch x world size): the global batch is fixed, so it must divide. `world` says where
    the world size comes from, for the message."""
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step:
        raise ConfigError(f"training.global_batch_size={global_batch_size} is not a multiple of per_device_batch_size "
                          f"({per_device_batch_size}) x world size ({world_size}{world}); use a multiple of "
                          f"{per_step} or change per_device_batch_size")
    return global_batch_size // per_step


def check_world_batch(cfg: DictConfig, prefix: str, where: Callable[[str], str], world_size: int = 0) -> None:
    """A training stage's global batch must split over its world size: nproc_per_node x nnodes from the config
    at plan time, or the running job's (world_size) when torchrun was started with another."""
    if "training" not in cfg:
        return
    world = f" = nproc_per_node {cfg.nproc_per_node} x nnodes {cfg.nnodes}" if not world_size else " in this job"
    try:
        gradient_accumulation(cfg.training.global_batch_size, cfg.training.per_device_batch_size,
                              world_size or cfg.nproc_per_node * cfg.nnodes, world)
    except ConfigError as e:
        raise ConfigError(f"{where(f'{prefix}.training.global_batch_size')}: {prefix}.{e}") from None


def validate(schema: type, node: Any, prefix: str, source: Source, label: str = "") -> DictConfig:
    """Merge `node` into the typed schema; unknown keys, wrong types, missing values and values the fields'
    rules refuse name key and file."""
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        full = f"{prefix}.{key}" if prefix and key else (prefix or key)
        if "not in struct" in str(e) or type(e).__name__ == "ConfigKeyError":
            raise _unknown_key(schema, key, full, label, source.where(full)) from None
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source.where(full)}: bad value for '{full}': {msg}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        full = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(f"{source.where(full)}: missing value for '{full}'; set it in the file or as {full}=...")
    shipped.locate_keys(merged, input_path_keys(schema, flag="shipped"))  # relative: here first, else shipped
    check_fields(schema, merged, prefix, source.where)
    if issubclass(schema, StageConfig):
        check_world_batch(merged, prefix, source.where)
    return merged


def input_path_keys(schema: type, prefix: str = "", flag: str = "input_path") -> List[str]:
    """Dotted keys of fields declared with `path_field` (recursing into nested dataclasses); flag="shipped": also
    the other path keys that may name a shipped file (training.deepspeed)."""
    try:
        keys, types = [], typing.get_type_hints(schema)  # the stage modules' annotations may be strings
    except (NameError, TypeError):  # a name only imported for type checkers: the annotations as they are
        keys, types = [], {f.name: f.type for f in dataclasses.fields(schema)}
    for f in dataclasses.fields(schema):
        if f.metadata.get(flag):
            keys.append(prefix + f.name)
        elif dataclasses.is_dataclass(types.get(f.name)):
            keys.extend(input_path_keys(types[f.name], prefix + f.name + ".", flag))
    return keys


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
