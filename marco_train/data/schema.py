"""The split stage's outputs and their readers (schema documented in mcts_data/README.md).

<split dir>/sft    (datasets.save_to_disk)  id, problem_id, question, response, tokens, tercile, confidence
<split dir>/pairs  (datasets.save_to_disk)  id, problem_id, question, chosen, rejected, shared_prefix_len,
                                            chosen_tokens, rejected_tokens

`response`, `chosen`, `rejected` are tagged response texts without the end-of-turn token; `tokens`,
`chosen_tokens`, `rejected_tokens` count `prompts.response_ids` (response tokens + end-of-turn) with the
training tokenizer; `shared_prefix_len` is the number of leading response tokens chosen and rejected share,
measured on the full chat-formatted sequences prompt_ids + response_ids.

`load_sft` / `load_pairs` read either such a directory or a JSONL file with the same fields (e.g. pairs
made elsewhere), and fail naming the file, line (row) and field when one is missing or has the wrong type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from ..io import DataError, check_record, iter_jsonl

SFT_COLUMNS: Dict[str, str] = {"id": "string", "problem_id": "string", "question": "string", "response": "string",
                               "tokens": "int64", "tercile": "string", "confidence": "float64"}
PAIR_COLUMNS: Dict[str, str] = {"id": "string", "problem_id": "string", "question": "string", "chosen": "string",
                                "rejected": "string", "shared_prefix_len": "int64", "chosen_tokens": "int64",
                                "rejected_tokens": "int64"}
SFT_REQUIRED = ("id", "question", "response")
PAIR_REQUIRED = ("id", "question", "chosen", "rejected")  # shared_prefix_len: checked where given, else computed
NULLABLE = {"confidence"}


def features(columns: Dict[str, str]):
    from datasets import Features, Value

    return Features({name: Value(kind) for name, kind in columns.items()})


def save_rows(rows: List[dict], columns: Dict[str, str], path: Path) -> None:
    """save_to_disk into a temporary sibling, then rename: a reader sees no half-written data set."""
    import shutil

    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    bars = is_progress_bar_enabled()
    disable_progress_bar()  # a bar per tiny write is noise
    try:
        Dataset.from_dict({c: [r[c] for r in rows] for c in columns}, features=features(columns)).save_to_disk(str(tmp))
    finally:
        if bars:
            enable_progress_bar()
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


_KINDS = {"string": ("a string", lambda v: isinstance(v, str)),
          "int64": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
          "float64": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))}


def _check_row(where: str, row: dict, columns: Dict[str, str], required) -> None:
    check_record(where, row, required)
    for name, value in row.items():
        if name not in columns or (value is None and name in NULLABLE):
            continue
        label, ok = _KINDS[columns[name]]
        if not ok(value) or (name in required and value == ""):
            raise DataError(f"{where}: field '{name}' must be {label}{' (non-empty)' if name in required else ''}, "
                            f"got {value!r:.60}")
    if "shared_prefix_len" in row and row["shared_prefix_len"] < 0:
        raise DataError(f"{where}: field 'shared_prefix_len' must be >= 0, got {row['shared_prefix_len']}")


def _load(path, columns: Dict[str, str], required, what: str):
    from datasets import Dataset, load_from_disk

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found (expected a split stage's '{what}' directory or a JSONL file)")
    if path.is_file():
        rows = []
        for where, row in iter_jsonl(path):
            _check_row(where, row, columns, required)
            rows.append(row)
        if not rows:
            raise DataError(f"{path}: no rows")
        return Dataset.from_list(rows)
    state = path / "state.json"
    if state.is_file() and not json.loads(state.read_text()).get("_data_files", [None]):
        raise DataError(f"{path}: the {what} set has no rows (the split stage that wrote it says why it dropped "
                        f"every query in its summary.json); widen the split's selection or search more problems")
    ds = load_from_disk(str(path))
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: missing field '{missing[0]}' (a column; has: {', '.join(ds.column_names)})")
    for i, row in enumerate(ds):
        _check_row(f"{path}: row {i}", row, columns, required)
    return ds


def load_sft(path):
    """The SFT set as a `datasets.Dataset` (columns of SFT_COLUMNS), validated."""
    return _load(path, SFT_COLUMNS, SFT_REQUIRED, "sft")


def load_pairs(path):
    """The pair set as a `datasets.Dataset` (columns of PAIR_COLUMNS), validated."""
    return _load(path, PAIR_COLUMNS, PAIR_REQUIRED, "pairs")
