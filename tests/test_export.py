"""The split's exports (marco_train/data/export.py) through TRL's own data preparation, LLaMA-Factory's entry, and
back into the stages' readers (marco_train/data/user_data.py): the question and system prompt survive every way."""

from __future__ import annotations

import json

import pytest

from conftest import TOY_CHECKPOINT
from dpo_testlib import toy_pairs
from marco_train.data.export import export_split
from marco_train.data.user_data import DatasetConfig, load_user_rows
from marco_train.prompts import build_prompt, prompt_ids, response_ids
from marco_train.tasks import get_task
from marco_train.train.dpo_data import tokenize_pairs
from marco_train.train.sft_trainer import tokenize_sft

TASK = get_task("gsm8k")  # a task with a system prompt (~170 tokens), unlike the toy task


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def split_rows(tokenizer, n=3):
    """Pairs and SFT rows in the split stage's schema (questions under the gsm8k prompt contract)."""
    pairs = toy_pairs(tokenizer, n, task="gsm8k")
    sft = [{"id": f"{p['problem_id']}/1", "problem_id": p["problem_id"], "question": p["question"],
            "response": p["chosen"], "tokens": p["chosen_tokens"], "tercile": "longest", "confidence": None}
           for p in pairs]
    return sft, pairs


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exported_pairs_through_trls_dpo_data_preparation_keep_question_and_system_prompt(tmp_path, toy_tokenizer):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

    sft, pairs = split_rows(toy_tokenizer)
    out = export_split(sft, pairs, TASK, tmp_path)
    rows = read_jsonl(out / "trl" / "pairs.jsonl")
    assert rows[0]["prompt"] == [{"role": "system", "content": TASK.system_prompt},
                                 {"role": "user", "content": pairs[0]["question"]}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": pairs[0]["chosen"]}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": pairs[0]["rejected"]}]
    for row in rows:
        assert maybe_extract_prompt(row) == row  # an explicit prompt: nothing is guessed from chosen/rejected
        text = maybe_apply_chat_template(row, toy_tokenizer)
        assert text["prompt"] == build_prompt(toy_tokenizer, TASK, pairs[rows.index(row)]["question"])

    dataset = Dataset.from_json(str(out / "trl" / "pairs.jsonl"))  # as a TRL user loads it
    trainer = DPOTrainer(model=str(TOY_CHECKPOINT), args=DPOConfig(str(tmp_path / "trl"), report_to=[], use_cpu=True),
                         train_dataset=dataset, processing_class=toy_tokenizer)
    for pair, example in zip(pairs, trainer.train_dataset):
        assert example["prompt_ids"] == prompt_ids(toy_tokenizer, TASK, pair["question"])  # the whole prompt
        decoded = toy_tokenizer.decode(example["prompt_ids"])
        assert TASK.system_prompt in decoded and pair["question"] in decoded
        # TRL's chosen/rejected: our response tokens (text + end-of-turn), then the template's trailing newline
        for side in ("chosen", "rejected"):
            ours = response_ids(toy_tokenizer, pair[side])
            assert example[f"{side}_ids"][:len(ours)] == ours
            assert toy_tokenizer.decode(example[f"{side}_ids"][len(ours):]) == "\n"


def test_exported_sft_rows_through_trls_sft_data_preparation_keep_question_and_system_prompt(tmp_path,
                                                                                             toy_tokenizer):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    sft, pairs = split_rows(toy_tokenizer)
    out = export_split(sft, pairs, TASK, tmp_path)
    dataset = Dataset.from_json(str(out / "trl" / "sft.jsonl"))
    assert set(dataset.column_names) == {"id", "problem_id", "prompt", "completion"}
    trainer = SFTTrainer(model=str(TOY_CHECKPOINT), args=SFTConfig(str(tmp_path / "trl"), report_to=[],
                                                                   use_cpu=True),
                         train_dataset=dataset, processing_class=toy_tokenizer)
    for row, example in zip(sft, trainer.train_dataset):
        prompt = prompt_ids(toy_tokenizer, TASK, row["question"])
        response = response_ids(toy_tokenizer, row["response"])
        ids, labels, end = example["input_ids"], example["labels"], len(prompt) + len(response)
        assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)  # prompt: not learned
        assert ids[len(prompt):end] == response == labels[len(prompt):end]
        decoded = toy_tokenizer.decode(ids[:len(prompt)])
        assert TASK.system_prompt in decoded and row["question"] in decoded


def test_llamafactory_entry_describes_the_exported_files(tmp_path, toy_tokenizer):
    sft, pairs = split_rows(toy_tokenizer, 2)
    out = export_split(sft, pairs, TASK, tmp_path, name="marco_gsm8k") / "llamafactory"
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"marco_gsm8k_sft", "marco_gsm8k_pairs"}
    assert info["marco_gsm8k_pairs"]["ranking"] is True and info["marco_gsm8k_pairs"]["formatting"] == "sharegpt"
    assert "ranking" not in info["marco_gsm8k_sft"]
    for entry in info.values():
        assert (out / entry["file_name"]).is_file()
        assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant", "system_tag": "system"}
    sft_rows, pair_rows = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "pairs.jsonl")
    system = {"role": "system", "content": TASK.system_prompt}
    assert sft_rows[0]["messages"] == [system, {"role": "user", "content": sft[0]["question"]},
                                       {"role": "assistant", "content": sft[0]["response"]}]
    # sharegpt preference rows: the prompt messages (system, then an odd number of turns), one message each side
    assert pair_rows[1]["messages"] == [system, {"role": "user", "content": pairs[1]["question"]}]
    assert pair_rows[1]["chosen"] == {"role": "assistant", "content": pairs[1]["chosen"]}
    assert pair_rows[1]["rejected"] == {"role": "assistant", "content": pairs[1]["rejected"]}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_exports_read_back_into_the_stages_train_exactly_like_the_split_rows(tmp_path, toy_tokenizer, fmt):
    sft, pairs = split_rows(toy_tokenizer)
    out = export_split(sft, pairs, TASK, tmp_path, fmt=fmt)
    assert sorted(p.name for p in (out / "trl").iterdir()) == [f"pairs.{fmt}", f"sft.{fmt}"]
    want_pairs, _ = tokenize_pairs(pairs, toy_tokenizer, TASK, 4096)
    want_sft = tokenize_sft(sft, toy_tokenizer, TASK, 4096)
    lf = {"prompt": "messages"}
    for where, columns in (("trl", {}), ("llamafactory", lf)):
        rows = load_user_rows(DatasetConfig(str(out / where / f"pairs.{fmt}"), columns=columns), "pairs", None, "task")
        got, _ = tokenize_pairs(rows, toy_tokenizer, None, 4096)  # no task: the prompts carry their system prompt
        assert [{k: v for k, v in e.items() if k != "id"} for e in got] == \
            [{k: v for k, v in e.items() if k != "id"} for e in want_pairs]
        rows = load_user_rows(DatasetConfig(str(out / where / f"sft.{fmt}")), "sft", None, "task")
        assert tokenize_sft(rows, toy_tokenizer, None, 4096)[:] == want_sft[:]


def test_export_format_is_checked_at_plan_time_and_push_refuses_an_unfinished_stage(tmp_path, capsys):
    from omegaconf import OmegaConf

    from marco_train.cli import push_main
    from marco_train.config import ConfigError
    from marco_train.stages import split

    cfg = OmegaConf.structured(split.Config(inputs={"trees": "mcts", "model": "bootstrap"}, export_format="csv"))
    with pytest.raises(ConfigError, match=r"stages.split.export_format='csv': use one of jsonl, parquet"):
        split.check_config(cfg, "stages.split")
    with pytest.raises(SystemExit):
        push_main([str(tmp_path), "--repo", "someone/data"])
    assert f"{tmp_path}: not a finished stage directory (no _DONE.json)" in capsys.readouterr().err
    (tmp_path / "_DONE.json").write_text("{}")
    with pytest.raises(SystemExit):
        push_main([str(tmp_path), "--repo", "someone/data"])
    assert "neither export/ (a split stage) nor model/ (an sft or dpo stage) to push" in capsys.readouterr().err
