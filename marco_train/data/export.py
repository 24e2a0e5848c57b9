"""The split stage's outputs in the ecosystem's formats: TRL's conversational datasets and LLaMA-Factory's.

<split dir>/export/trl/sft.<ext>     prompt/completion rows: {id, problem_id, prompt: [system, user], completion:
                                     [assistant]} (TRL's conversational prompt-completion format)
<split dir>/export/trl/pairs.<ext>   preference rows: {id, problem_id, prompt: [system, user], chosen: [assistant],
                                     rejected: [assistant]} (TRL's conversational preference format, explicit prompt)
<split dir>/export/llamafactory/     the same rows as LLaMA-Factory's sharegpt ("OpenAI") format: sft {id, messages:
                                     [system, user, assistant]}, pairs {id, messages: [system, user], chosen:
                                     {assistant}, rejected: {assistant}}, and the dataset_info.json describing them

<ext> is jsonl or parquet (the split stage's `export_format`). The prompt messages are the prompt contract's
(`prompts.messages`: the task's system prompt, if it has one, and its user message), so TRL's
`maybe_extract_prompt` has nothing to guess and the system prompt travels with the data. The assistant contents are
the tagged response texts; a chat template adds the end-of-turn token, as `prompts.response_ids` does.

`push_split` uploads the TRL files to a hub dataset repository (configs `sft` and `pairs`) through
`datasets.Dataset.push_to_hub`. The sft and dpo stages read these files back (data/user_data.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

from ..prompts import messages

FORMATS = ("jsonl", "parquet")
EXPORT_DIR = "export"


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def trl_sft_rows(sft_rows, task) -> List[dict]:
    return [{"id": r["id"], "problem_id": r["problem_id"], "prompt": messages(task, r["question"]),
             "completion": [assistant(r["response"])]} for r in sft_rows]


def trl_pair_rows(pair_rows, task) -> List[dict]:
    return [{"id": r["id"], "problem_id": r["problem_id"], "prompt": messages(task, r["question"]),
             "chosen": [assistant(r["chosen"])], "rejected": [assistant(r["rejected"])]} for r in pair_rows]


def llamafactory_sft_rows(trl_rows: List[dict]) -> List[dict]:
    return [{"id": r["id"], "messages": r["prompt"] + r["completion"]} for r in trl_rows]


def llamafactory_pair_rows(trl_rows: List[dict]) -> List[dict]:
    return [{"id": r["id"], "messages": r["prompt"], "chosen": r["chosen"][0], "rejected": r["rejected"][0]}
            for r in trl_rows]


def dataset_info(name: str, ext: str) -> Dict[str, dict]:
    """LLaMA-Factory's dataset_info.json entries (sharegpt formatting, role/content tags; `ranking` for pairs):
    train with `dataset_dir: <split dir>/export/llamafactory` and `dataset: <name>_sft` or `<name>_pairs`."""
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    return {f"{name}_sft": {"file_name": f"sft.{ext}", "formatting": "sharegpt", "columns": {"messages": "messages"},
                            "tags": tags},
            f"{name}_pairs": {"file_name": f"pairs.{ext}", "formatting": "sharegpt", "ranking": True,
                              "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
                              "tags": tags}}


def write_rows(rows: List[dict], path: Path) -> None:
    """JSONL (one JSON object a line) or Parquet, by the suffix."""
    if path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(path))
        return
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def export_split(sft_rows, pair_rows, task, out_dir: Path, fmt: str = "jsonl", name: str = "marco") -> Path:
    """Write <out_dir>/export (layout above) into a temporary sibling, then rename: never half an export."""
    if fmt not in FORMATS:
        raise ValueError(f"export_format='{fmt}': use {' or '.join(FORMATS)}")
    final, tmp = Path(out_dir) / EXPORT_DIR, Path(out_dir) / f".{EXPORT_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "trl").mkdir(parents=True)
    (tmp / "llamafactory").mkdir()
    sft, pairs = trl_sft_rows(sft_rows, task), trl_pair_rows(pair_rows, task)
    write_rows(sft, tmp / "trl" / f"sft.{fmt}")
    write_rows(pairs, tmp / "trl" / f"pairs.{fmt}")
    write_rows(llamafactory_sft_rows(sft), tmp / "llamafactory" / f"sft.{fmt}")
    write_rows(llamafactory_pair_rows(pairs), tmp / "llamafactory" / f"pairs.{fmt}")
    (tmp / "llamafactory" / "dataset_info.json").write_text(json.dumps(dataset_info(name, fmt), indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def push_split(split_dir: Path, repo_id: str, private: bool = False) -> List[str]:
    """Upload a split stage's TRL export to the hub dataset `repo_id`, one config per file (`sft`, `pairs`), via
    datasets' own push_to_hub (needs a login: `hf auth login` or HF_TOKEN). Returns the configs pushed."""
    from datasets import Dataset

    trl = Path(split_dir) / EXPORT_DIR / "trl"
    files = sorted(p for p in trl.glob("*.*") if p.suffix in (".jsonl", ".parquet")) if trl.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{trl}: no exported sft/pairs files; point at a finished split stage directory")
    for path in files:
        ds = Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else Dataset.from_json(str(path))
        ds.push_to_hub(repo_id, config_name=path.stem, split="train", private=private)
    return [p.stem for p in files]
