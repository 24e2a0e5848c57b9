"""The files that ship with the package: the configs, the problem files and the toy checkpoint.

In the repository they live at the top level, `configs/` and `mcts_data/` (one copy each), and in
`marco_train/toy/checkpoint/`. A wheel carries the first two inside the package as `marco_train/_shipped/configs/`
and `marco_train/_shipped/mcts_data/` (build_hooks.py copies them at build time), so an installed package finds
all three with importlib.resources wherever it runs. A source checkout or an editable install has no
`_shipped/`: there the files are read where they are, at the top of the repository next to the package.

A relative path in a config (or on the command line) is tried against the working directory first, so a user's
own `configs/...` or `mcts_data/...` wins; only a path missing there is looked up among the shipped files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional, Tuple

PACKAGE = "marco_train"
IN_PACKAGE = "_shipped"  # where a wheel holds the top-level directories below
TOP_LEVEL = ("configs", "mcts_data")  # the repository's top-level directories that ship with the package


def _package_dir() -> Path:
    return Path(str(resources.files(PACKAGE)))  # an installed wheel or a checkout: a directory on disk


def root(top: str) -> Optional[Path]:
    """The directory holding the shipped `top` (configs or mcts_data): inside the package (a wheel), else at the
    top of the source checkout the package was imported from; None if neither has it."""
    inside = _package_dir() / IN_PACKAGE / top
    if inside.is_dir():
        return inside
    checkout = _package_dir().parent
    if (checkout / "pyproject.toml").is_file() and (checkout / top).is_dir():
        return checkout / top
    return None


def shipped_file(relative: str) -> Optional[Path]:
    """The shipped file or directory at a repository-relative path (`configs/demo.yaml`,
    `mcts_data/problems/toy_train.jsonl`, `marco_train/toy/checkpoint`), or None."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        return None
    if parts[0] == PACKAGE:
        base: Optional[Path] = _package_dir()
    elif parts[0] in TOP_LEVEL:
        base = root(parts[0])
    else:
        return None
    found = base.joinpath(*parts[1:]) if base is not None else None
    return found if found is not None and found.exists() else None


def locate(value: str) -> str:
    """A path from a config or the command line, as it should be opened: unchanged if it exists (relative to the
    working directory) or is not one of the shipped files; else the shipped file's absolute path."""
    if not value or Path(value).expanduser().exists():
        return value
    found = shipped_file(value)
    return str(found) if found is not None else value


def locate_keys(cfg, keys: List[str]) -> None:
    """Rewrite each dotted key of an OmegaConf config that names a path with `locate` (in place)."""
    from omegaconf import OmegaConf

    for key in keys:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and locate(value) != value:
            OmegaConf.update(cfg, key, locate(value))


def shipped_config(name: str) -> Optional[Path]:
    """A shipped config by its path (`configs/demo.yaml`) or its short name (`demo`, `ablations/paper`)."""
    for candidate in (name, f"configs/{name}", f"configs/{name}.yaml"):
        found = shipped_file(candidate)
        if found is not None and found.is_file():
            return found
    return None


def config_file(value: str) -> str:
    """The pipeline config to read for `--config value`: the file in the working directory if there is one, else
    the shipped config of that path or short name, else `value` unchanged (the loader says it is not found)."""
    if Path(value).expanduser().exists():
        return value
    found = shipped_config(value)
    return str(found) if found is not None else value


def _summary(path: Path) -> str:
    """The first comment line of a YAML file, or what a JSON under configs/deepspeed/ is for."""
    if path.suffix == ".json":
        return "a DeepSpeed config: training.deepspeed=configs/deepspeed/" + path.name if \
            path.parent.name == "deepspeed" else ""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            text = text[:text.index(". ") + 1] if ". " in text else text  # its first sentence
            return text if len(text) <= 100 else text[:97] + "..."
        if line.strip():
            break
    return ""


def listing() -> List[Tuple[str, str]]:
    """[(repository-relative path, one-line summary)] of every shipped config and problem file, sorted."""
    out = []
    for top, patterns in (("configs", ("*.yaml", "*.json")), ("mcts_data", ("problems/*.jsonl",))):
        base = root(top)
        if base is None:
            continue
        for pattern in patterns:
            for path in base.rglob(pattern) if top == "configs" else base.glob(pattern):
                out.append((f"{top}/{path.relative_to(base).as_posix()}", _summary(path) if top == "configs" else ""))
    return sorted(out)
