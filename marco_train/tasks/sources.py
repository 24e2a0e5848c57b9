"""Where a task's problems come from: a dataset on the Hugging Face Hub by name, or a local file.

Both go through `datasets.load_dataset` (the Hub by name; local .jsonl/.json/.parquet/.csv through its json,
parquet and csv builders), so a local file is read exactly as the Hub copy would be. A task then parses each row
from the dataset's own format into a `Problem`.

`source` syntax: "" = the task's default dataset; a path ending in .jsonl/.json/.parquet/.csv (or any
existing file) = a local file (the `split` is ignored: the whole file is one split); otherwise "owner/name" or
"owner/name:config" on the Hub. Our own JSONL problem files (exactly the fields id, question, answer, with the
reference already parsed, e.g. mcts_data/problems/*.jsonl) are accepted by every task and read with
base.load_problems_file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from ..io import DataError, text_lines
from ..models import env_on
from .base import PROBLEM_FIELDS, Problem, Task, load_problems_file

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class HubDataset:
    name: str
    config: Optional[str] = None
    split: str = "test"


def is_local(source: str) -> bool:
    return Path(source).suffix in LOCAL_FORMATS or Path(source).is_file()


def load_rows(source: str, split: str, default: HubDataset) -> Tuple[str, Iterator[dict]]:
    """(a label naming the source for error messages, the rows as dicts)."""
    from datasets import load_dataset

    source = source or ""
    if source and is_local(source):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"problems file {path} does not exist (a local source must be a .jsonl, .json, "
                                    f".parquet or .csv file in the dataset's original format)")
        fmt = LOCAL_FORMATS.get(path.suffix)
        if fmt is None:
            raise DataError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(LOCAL_FORMATS)})")
        if path.suffix != ".parquet":
            text_lines(path)  # a byte that is not UTF-8: named by file:line here, not deep inside pyarrow
        data = load_dataset(fmt, data_files=str(path), split="train")
        return str(path), iter(data)
    name, _, config = (source or default.name).partition(":")
    config = config or (default.config if not source or name == default.name else None)
    split = split or default.split
    problem = hub_dataset_problem(name)
    if problem:
        raise DataError(problem)
    try:
        data = load_dataset(name, config, split=split)
    except ConnectionError as e:
        raise DataError(f"dataset '{name}' could not be loaded from the hub or the local cache ({e}); check the "
                        f"network, or download it first (`hf download --repo-type dataset {name}`)") from None
    return f"{name}{':' + config if config else ''}[{split}]", iter(data)


def hub_dataset_problem(name: str) -> Optional[str]:
    """Offline, a hub dataset must be in a local cache (datasets' prepared copy or the hub's download cache):
    what to do if it is in neither, else None."""
    if not env_on("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        return None
    from datasets import config
    from huggingface_hub import constants

    prepared = Path(config.HF_DATASETS_CACHE) / name.replace("/", "___")
    downloaded = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    if prepared.exists() or downloaded.exists():
        return None
    return (f"dataset '{name}' is not in the local cache ({config.HF_DATASETS_CACHE} or {constants.HF_HUB_CACHE}) "
            f"and the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); download it where there is network "
            f"(`hf download --repo-type dataset {name}`) or point problems_file at a local file")


def is_problem_file(source: str) -> bool:
    """Is `source` one of our own JSONL problem files (exactly id, question, answer: references already parsed)?"""
    path = Path(source)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, errors="replace") as f:  # a byte that is not UTF-8 is named by the reader, by line
        first = next((line for line in f if line.strip()), "")
    try:
        return set(json.loads(first)) == set(PROBLEM_FIELDS)
    except (ValueError, TypeError):
        return False


def get_field(row: dict, name: str, where: str, required: bool = True) -> Any:
    """row[name], matching the key case-insensitively (datasets disagree: 'Problem' vs 'problem')."""
    if name in row:
        return row[name]
    for key, value in row.items():
        if key.lower() == name.lower():
            return value
    if required:
        raise DataError(f"{where}: missing field '{name}' (fields present: {', '.join(sorted(row)) or 'none'})")
    return None


def row_id(row: dict, index: int, prefix: str, *fields: str) -> str:
    """The dataset's own id (first present of `fields`), else '<prefix>-<row index>'."""
    for name in fields:
        value = get_field(row, name, "", required=False)
        if value not in (None, ""):
            return str(value)
    return f"{prefix}-{index:05d}"


def reasoning_system_prompt(answer_instruction: str) -> str:
    """The system text asking for the tagged reasoning format (tag names are prompts.NODE_TYPES)."""
    return ("Think step by step and write your reasoning as tagged segments, one per line: "
            "<sub_task>...</sub_task> to break the problem down, <thinking>...</thinking> for each reasoning step, "
            "<double_check>...</double_check> to verify a result, and <reflection>...</reflection> followed by "
            "<thinking_from_scratch>...</thinking_from_scratch> when you find a mistake. "
            f"End with one <answer>...</answer> segment that starts with \"The answer is:\" {answer_instruction}")


class DatasetTask(Task):
    """A task whose problems come from a dataset in its own format; subclasses say how to read one row."""

    hub = HubDataset("")
    id_fields: Tuple[str, ...] = ("id",)

    def parse_row(self, row: dict, where: str) -> Tuple[str, str]:
        """(question, reference answer) from one row of the dataset; DataError naming `where` if malformed."""
        raise NotImplementedError

    def keep_row(self, row: dict) -> bool:
        return True

    def load_problems(self, source: str = "", split: str = "", limit: int = 0) -> List[Problem]:
        if source and is_problem_file(source):
            return load_problems_file(source, limit=limit, check_reference=self.check_reference)
        label, rows = load_rows(source, split, self.hub)
        problems, seen = [], set()
        for index, row in enumerate(rows):
            if not self.keep_row(row):
                continue
            where = f"{label}: row {index}"
            pid = row_id(row, index, self.name, *self.id_fields)
            if pid in seen:
                raise DataError(f"{where}: duplicate problem id '{pid}'")
            seen.add(pid)
            question, answer = self.parse_row(row, where)
            if not isinstance(question, str) or not question.strip():
                raise DataError(f"{where}: empty question")
            problems.append(Problem(pid, question, answer))
            if limit and len(problems) == limit:
                break
        if not problems:
            raise DataError(f"{label}: no {self.name} problems found")
        return problems


def source_problem(task: Task, source: str) -> Optional[str]:
    """What is wrong with `source` as `task`'s problems_file, at plan time (before any stage directory exists):
    a local file that does not exist, or is not UTF-8, or (our JSONL problem files, read whole: they are small)
    a line the task cannot use; offline, a hub dataset that is not cached. None if it looks usable."""
    if isinstance(task, DatasetTask) and not (source and is_local(source)):
        return hub_dataset_problem((source or task.hub.name).partition(":")[0])
    if not source:
        return f"the {task.name} task reads a problem file: set problems_file"
    if not Path(source).is_file():
        return (f"problem file '{source}' not found" + (" (it is a directory)" if Path(source).is_dir() else "")
                + " (relative paths start where you run; bundled files are in mcts_data/problems/)")
    try:
        if not isinstance(task, DatasetTask) or is_problem_file(source):
            task.load_problems(source)
        elif Path(source).suffix != ".parquet":
            text_lines(source)
    except DataError as e:
        return str(e)
    return None
