"""A user's own data for the sft and dpo stages (their `dataset:` key, DatasetConfig below), read into the rows
those stages train on: {id, prompt: messages, response} (sft) and {id, prompt: messages, chosen, rejected} (dpo).

Accepted, per row (field names mappable with `dataset.columns`, e.g. {prompt: instruction, completion: output}):
- TRL's formats: prompt-completion (`prompt`, `completion`) and language modelling (`messages`, whose last message
  is the assistant's) for sft; preference (`prompt`, `chosen`, `rejected`) for dpo, with an implicit prompt too
  (no `prompt`: the messages chosen and rejected share, as TRL's extract_prompt finds them). Conversational
  (message lists) or plain text;
- LLaMA-Factory's rows (data/export.py writes both): sharegpt messages with `from`/`value` keys and human/gpt roles,
  a single-message `chosen`/`rejected`, an optional `system` column; alpaca rows map their columns, e.g.
  {prompt: instruction, completion: output}.
A plain-text prompt is a question under the prompt contract of the stage's `task` (its system prompt and user
message, prompts.messages), or the user message after the row's `system` when one is mapped. A message prompt is
used as given (a `system` column adds the system message it lacks); it must end with a user message. A response is
the assistant message's content; training appends the end-of-turn token (prompts.response_ids). The stages compute
what they need themselves (the dpo stage the shared prefix, from the token ids).

Sources: a local .jsonl, .json (a JSON array or JSON lines) or .parquet file, a directory of such files or a
datasets.save_to_disk directory (their content is fingerprinted), or a hub dataset, which must be pinned with
`revision` (a commit sha), so that the stage fingerprint names fixed data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..config import ConfigError, path_field
from ..io import DataError, iter_jsonl
from ..prompts import messages as task_messages
from ..prompts import row_messages


@dataclass
class DatasetConfig:
    """The sft / dpo stages' `dataset:` key: a user's own data instead of a split stage (rules above):
    TRL's formats (prompt/completion, messages, prompt/chosen/rejected; conversational or plain text) or
    LLaMA-Factory's sharegpt/alpaca rows, as a local JSONL/JSON/Parquet file or directory, or a hub dataset."""
    # Local file or directory (its content is fingerprinted) or a hub dataset name (pinned by `revision`).
    name_or_path: str = path_field("")
    revision: str = ""  # a hub dataset's commit sha (required for hub datasets: the fingerprint must name fixed data)
    split: str = "train"
    # Our field -> the dataset's column, e.g. {prompt: instruction, completion: output}. Fields: prompt, system,
    # completion, messages (sft), chosen, rejected (dpo), id; unmapped ones use their own names.
    columns: Dict[str, str] = field(default_factory=dict)


FIELDS = {"sft": ("prompt", "system", "completion", "messages", "id"),
          "pairs": ("prompt", "system", "chosen", "rejected", "id")}
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_hub_name(name: str) -> bool:
    return bool(name) and not Path(name).exists()


def check_dataset_config(dataset, kind: str, prefix: str, where, inputs=()) -> None:
    """Plan-time checks of a stage's `dataset` block (kind: sft | pairs) against its `inputs`; errors name the key
    and where it is set."""
    if not dataset.name_or_path:
        return
    key = f"{prefix}.dataset"
    if "data" in inputs:
        raise ConfigError(f"{where(key)}: {prefix}: set exactly one of inputs.data (a split stage) "
                          f"and dataset.name_or_path (your own file or hub dataset)")
    for name in dataset.columns:
        if name not in FIELDS[kind]:
            raise ConfigError(f"{where(key + '.columns')}: {key}.columns.{name}: not a field of this stage's data "
                              f"(fields: {', '.join(FIELDS[kind])})")
    if is_hub_name(dataset.name_or_path) and not dataset.revision:
        raise ConfigError(f"{where(key + '.name_or_path')}: {key}.name_or_path='{dataset.name_or_path}' is not a "
                          f"local file or directory; if it is a hub dataset, pin it with {key}.revision=<commit sha> "
                          f"(the fingerprint must name fixed data)")


def _files(path: Path) -> List[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{path}: no data files (*.jsonl, *.json, *.parquet) and not a datasets.save_to_disk "
                        f"directory")
    return files


def _from_file(path: Path) -> Iterator[Tuple[str, dict]]:
    if path.suffix == ".parquet":
        from datasets import Dataset

        yield from ((f"{path}: row {i}", row) for i, row in enumerate(Dataset.from_parquet(str(path))))
        return
    if path.suffix == ".json" and path.read_text().lstrip().startswith("["):
        rows = json.loads(path.read_text())
        yield from ((f"{path}: row {i}", row) for i, row in enumerate(rows))
        return
    yield from iter_jsonl(path)


def read_records(dataset) -> Iterator[Tuple[str, dict]]:
    """(where, raw row) for every row of the dataset a DatasetConfig names; `where` labels errors (file:line)."""
    name = dataset.name_or_path
    path = Path(name)
    if path.is_file():
        yield from _from_file(path)
        return
    if path.is_dir() and not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        for f in _files(path):
            yield from _from_file(f)
        return
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if dataset.split not in ds:
                raise DataError(f"{path}: no split '{dataset.split}' (has: {', '.join(ds)}); set dataset.split")
            ds = ds[dataset.split]
    else:
        from datasets import load_dataset

        ds = load_dataset(name, revision=dataset.revision, split=dataset.split)
        path = f"{name}@{dataset.revision}[{dataset.split}]"
    yield from ((f"{path}: row {i}", row) for i, row in enumerate(ds))


def _message(value, where: str, field: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: field '{field}': expected a message (an object with role/content or "
                        f"from/value), got {value!r:.60}")
    role, content = value.get("role", value.get("from")), value.get("content", value.get("value"))
    if role not in ROLES or not isinstance(content, str):
        raise DataError(f"{where}: field '{field}': a message needs a role ({', '.join(ROLES)}) and a text "
                        f"content, got {value!r:.80}")
    return {"role": ROLES[role], "content": content}


def _messages(value, where: str, field: str) -> List[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}': expected a non-empty list of messages, got {value!r:.60}")
    return [_message(m, where, field) for m in value]


def response_text(value, where: str, field: str) -> str:
    """The assistant text of a response field: a string, one assistant message, or a list of exactly one."""
    if isinstance(value, str):
        text = value
    else:
        msgs = _messages(value, where, field) if isinstance(value, list) else [_message(value, where, field)]
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(f"{where}: field '{field}': expected one assistant message, got roles "
                            f"{[m['role'] for m in msgs]} (multi-turn responses are not supported)")
        text = msgs[0]["content"]
    if not text:
        raise DataError(f"{where}: field '{field}' is empty")
    return text


def prompt_messages(value, system: Optional[str], task, where: str, field: str, task_key: str) -> List[dict]:
    """A row's prompt as chat messages (rules in the module docstring)."""
    if isinstance(value, str):
        if system:
            return [{"role": "system", "content": system}, {"role": "user", "content": value}]
        if task is None:
            raise DataError(f"{where}: field '{field}' is plain text (a question): set {task_key} (its system prompt "
                            f"and user message wrap it), map a system column, or give the prompt as messages")
        return task_messages(task, value)
    msgs = _messages(value, where, field)
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    if msgs[-1]["role"] != "user":
        raise DataError(f"{where}: field '{field}': the prompt must end with a user message, ends with "
                        f"'{msgs[-1]['role']}'")
    return msgs


def _field(row: dict, column: str, where: str, required: bool = True):
    if column not in row or row[column] is None:
        if required:
            raise DataError(f"{where}: missing field '{column}' (has: {', '.join(row)}); map yours with "
                            f"dataset.columns")
        return None
    return row[column]


def load_user_rows(dataset, kind: str, task, task_key: str) -> List[dict]:
    """The rows of a user's dataset for the sft (kind='sft') or dpo (kind='pairs') stage; see the module docstring.
    `task` (or None) wraps plain-text prompts; `task_key` names its config key in errors."""
    from trl.data_utils import extract_prompt

    cols = {name: dataset.columns.get(name, name) for name in FIELDS[kind]}
    rows = []
    for i, (where, raw) in enumerate(read_records(dataset)):
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        system = _field(raw, cols["system"], where, required=False)
        given_id = _field(raw, cols["id"], where, required=False)
        row = {"id": str(i if given_id is None else given_id)}
        if kind == "sft" and cols["prompt"] not in raw and cols["messages"] in raw:
            msgs = _messages(raw[cols["messages"]], where, cols["messages"])
            prompt, completion = msgs[:-1], [msgs[-1]]
            if not prompt:
                raise DataError(f"{where}: field '{cols['messages']}' has no prompt before its last message")
        elif kind == "pairs" and cols["prompt"] not in raw:
            chosen, rejected = (_field(raw, cols[k], where) for k in ("chosen", "rejected"))
            if isinstance(chosen, str) or isinstance(rejected, str):
                raise DataError(f"{where}: no field '{cols['prompt']}' and plain-text chosen/rejected: the prompt "
                                f"cannot be told apart from the response (TRL's maybe_extract_prompt would cut it "
                                f"where the texts first differ); add a prompt column or map one with "
                                f"dataset.columns.prompt")
            split = extract_prompt({"chosen": _messages(chosen, where, cols["chosen"]),
                                    "rejected": _messages(rejected, where, cols["rejected"])})
            prompt, raw = split["prompt"], {**raw, cols["chosen"]: split["chosen"], cols["rejected"]: split["rejected"]}
            if not prompt:
                raise DataError(f"{where}: chosen and rejected share no leading messages, so there is no prompt; add "
                                f"a prompt column")
        else:
            prompt = _field(raw, cols["prompt"], where)
            completion = _field(raw, cols["completion"], where) if kind == "sft" else None
        row["prompt"] = prompt_messages(prompt, system, task, where, cols["prompt"], task_key)
        if kind == "sft":
            row["response"] = response_text(completion, where, cols["completion"])
        else:
            for k in ("chosen", "rejected"):
                row[k] = response_text(_field(raw, cols[k], where), where, cols[k])
        rows.append(row)
    if not rows:
        raise DataError(f"{dataset.name_or_path}: no rows")
    return rows


def system_prompts(rows: List[dict], task) -> Dict[str, int]:
    """{system prompt: rows using it} over training rows ('' counts rows without one)."""
    counts: Dict[str, int] = {}
    for row in rows:
        first = row_messages(task, row)[0]
        text = first["content"] if first["role"] == "system" else ""
        counts[text] = counts.get(text, 0) + 1
    return counts


def stage_rows(cfg, data_dir, kind: str, prefix: str):
    """(rows, task name or '', source, description) for a training stage: its user dataset (`cfg.dataset`) or its
    split stage input `data_dir` (<dir>/sft or <dir>/pairs; the task recorded in <dir>/summary.json)."""
    from ..tasks import get_task
    from .schema import load_pairs, load_sft

    if cfg.dataset.name_or_path:
        d = cfg.dataset
        rows = load_user_rows(d, kind, get_task(cfg.task) if cfg.task else None, f"{prefix}.task")
        pinned = f" at revision {d.revision}" if is_hub_name(d.name_or_path) else ""
        return rows, cfg.task, d.name_or_path, f"`{d.name_or_path}`{pinned} ({len(rows)} rows)"
    summary = Path(data_dir) / "summary.json"
    task = cfg.task or (json.loads(summary.read_text()).get("task") if summary.exists() else "")
    if not task:
        raise ConfigError(f"{prefix}.task: not set and {summary} records none; set the task (e.g. toy)")
    source = Path(data_dir) / kind
    rows = list(load_sft(source) if kind == "sft" else load_pairs(source))
    return rows, task, str(source), f"the split stage's {kind} set `{source}` ({len(rows)} rows, task {task})"
