"""A user's own data for the sft and dpo stages (marco_train/data/user_data.py): the formats read, the errors, the
plan-time checks (content-hashed files, pinned hub datasets, inputs.data=<path>), and both stages trained from a
user's file (the finished directories: model card, no optimizer state, no pickle beside the weights)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import TOY_CHECKPOINT
from marco_train.config import ConfigError
from marco_train.data.user_data import DatasetConfig, load_user_rows
from marco_train.io import DataError
from marco_train.pipeline import build_plan, run_plan
from marco_train.tasks import get_task

Q, C, R = "Compute 3 + 4.", "<thinking>3 + 4 = 7</thinking>\n<answer>The answer is: 7</answer>", \
    "<thinking>3 + 4 = 8</thinking>\n<answer>The answer is: 8</answer>"
USER, SYSTEM = {"role": "user", "content": Q}, {"role": "system", "content": "Be brief."}
ASSISTANT_C, ASSISTANT_R = {"role": "assistant", "content": C}, {"role": "assistant", "content": R}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rows_of(tmp_path, raw, kind, task=None, **columns):
    return load_user_rows(DatasetConfig(write_jsonl(tmp_path / "d.jsonl", raw), columns=columns), kind,
                          get_task(task) if task else None, "stages.x.task")


def test_preference_formats_become_the_same_rows(tmp_path):
    gsm8k = get_task("gsm8k")
    want = {"id": "0", "prompt": [SYSTEM, USER], "chosen": C, "rejected": R}
    trl_conversational = {"prompt": [SYSTEM, USER], "chosen": [ASSISTANT_C], "rejected": [ASSISTANT_R]}
    trl_implicit = {"chosen": [SYSTEM, USER, ASSISTANT_C], "rejected": [SYSTEM, USER, ASSISTANT_R]}
    trl_text_with_system = {"prompt": Q, "system": "Be brief.", "chosen": C, "rejected": R}
    sharegpt = {"conversations": [{"from": "human", "value": Q}], "chosen": {"from": "gpt", "value": C},
                "rejected": {"from": "gpt", "value": R}, "system": "Be brief."}
    for raw, columns in ((trl_conversational, {}), (trl_implicit, {}), (trl_text_with_system, {}),
                         (sharegpt, {"prompt": "conversations"})):
        assert rows_of(tmp_path, [raw], "pairs", **columns) == [want], raw
    # a plain-text question under the task's prompt contract: its system prompt and user message
    (row,) = rows_of(tmp_path, [{"prompt": Q, "chosen": C, "rejected": R, "id": "q7"}], "pairs", task="gsm8k")
    assert row == {"id": "q7", "prompt": [{"role": "system", "content": gsm8k.system_prompt}, USER], "chosen": C,
                   "rejected": R}


def test_sft_formats_become_the_same_rows(tmp_path):
    want = [{"id": "0", "prompt": [SYSTEM, USER], "response": C}]
    assert rows_of(tmp_path, [{"prompt": [SYSTEM, USER], "completion": [ASSISTANT_C]}], "sft") == want
    assert rows_of(tmp_path, [{"messages": [SYSTEM, USER, ASSISTANT_C]}], "sft") == want
    alpaca = {"instruction": Q, "output": C, "system": "Be brief."}
    assert rows_of(tmp_path, [alpaca], "sft", prompt="instruction", completion="output") == want
    assert rows_of(tmp_path, [{"question": Q, "answer": C}], "sft", task="toy", prompt="question",
                   completion="answer") == [{"id": "0", "prompt": [USER], "response": C}]  # toy: no system prompt


def test_user_data_errors_name_the_line_and_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"d.jsonl:2: no field 'prompt' and plain-text chosen/rejected: the prompt "
                                        r"cannot be told apart"):
        rows_of(tmp_path, [{"prompt": Q, "chosen": C, "rejected": R}, {"chosen": Q + C, "rejected": Q + R}],
                "pairs", task="toy")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'prompt' is plain text \(a question\): set "
                                        r"stages.x.task"):
        rows_of(tmp_path, [{"prompt": Q, "completion": C}], "sft")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'prompt': the prompt must end with a user message"):
        rows_of(tmp_path, [{"prompt": [USER, ASSISTANT_C], "completion": C}], "sft")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'completion': expected one assistant message, got roles "
                                        r"\['assistant', 'user'\]"):
        rows_of(tmp_path, [{"prompt": [USER], "completion": [ASSISTANT_C, USER]}], "sft")
    with pytest.raises(DataError, match=r"d.jsonl:1: missing field 'output' \(has: prompt, completion\); map yours"):
        rows_of(tmp_path, [{"prompt": [USER], "completion": C}], "sft", completion="output")


def plan_config(tmp_path: Path, stage: dict, name: str = "config.yaml") -> str:
    config = {"experiment": "u", "runs_dir": str(tmp_path / "runs"), "seed": 0, "wandb": {"mode": "disabled"},
              "stages": {"dpo": {"kind": "dpo", "model": {"name_or_path": str(TOY_CHECKPOINT)}, **stage}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_plan_time_checks_and_the_fingerprint_covers_the_files_bytes(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": [USER], "chosen": [ASSISTANT_C],
                                                   "rejected": [ASSISTANT_R]}])
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: inputs.data names unknown stage '.*pairs.jsonl'; inputs "
                                          r"name stage instances .* set dataset.name_or_path=.*pairs.jsonl"):
        build_plan(plan_config(tmp_path, {"inputs": {"data": data}}))
    with pytest.raises(ConfigError, match=r"stages.dpo.dataset.name_or_path='someone/pairs' is not a local file or "
                                          r"directory; if it is a hub dataset, pin it with "
                                          r"stages.dpo.dataset.revision=<commit sha>"):
        build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": "someone/pairs"}}))
    pinned = build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": "someone/pairs", "revision": "abc123"}}))
    assert pinned.stages["dpo"].fingerprint_inputs["config"]["dataset"]["revision"] == "abc123"
    with pytest.raises(ConfigError, match=r"stages.dpo.dataset.columns.completion: not a field of this stage's data"):
        build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": data, "columns": {"completion": "x"}}}))
    with pytest.raises(ConfigError, match=r"stages.dpo: set exactly one of inputs.data \(a split stage\) and "
                                          r"dataset.name_or_path"):
        build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": data}, "inputs": {"data": "dpo"}}))
    before = build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": data}})).stages["dpo"].fingerprint
    Path(data).write_text(Path(data).read_text().replace("3 + 4 = 8", "3 + 4 = 9"))
    after = build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": data}})).stages["dpo"].fingerprint
    assert before != after  # the file's content, not its name, is in the fingerprint


def assert_finished_stage_dir(out: Path, steps: int):
    """Only the newest checkpoint (save_total_limit 1), holding weights and trainer state, no optimizer state
    nor pickles; the model directory has weights, tokenizer and the card, no training_args.bin."""
    (ckpt,) = (out / "checkpoints").iterdir()
    assert ckpt.name == f"checkpoint-{steps}"
    kept = sorted(p.name for p in ckpt.iterdir())
    assert "model.safetensors" in kept and "trainer_state.json" in kept
    assert not [n for n in kept if n.endswith((".pt", ".pth", ".bin")) or n == "COMPLETE"], kept
    assert not (out / "checkpoints" / "README.md").exists()  # TRL's "fine-tuned version of [None]" draft card
    model = sorted(p.name for p in (out / "model").iterdir())
    assert "model.safetensors" in model and "README.md" in model and "training_args.bin" not in model
    assert not list((out / "model").glob("*.pt"))


def run_card_snippet(card: str, max_new_tokens: int = 40) -> str:
    """Run the card's usage snippet as written (fewer new tokens, for time), return what it printed."""
    import contextlib
    import io

    (snippet,) = re.findall(r"```python\n(.*?)```", card, re.S)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace("max_new_tokens=512", f"max_new_tokens={max_new_tokens}"), {})
    return printed.getvalue()


def test_dpo_stage_trains_from_a_users_trl_jsonl(tmp_path, toy_tokenizer):
    from dpo_testlib import toy_pairs
    from marco_train.data.export import trl_pair_rows

    pairs = toy_pairs(toy_tokenizer, 4)
    data = write_jsonl(tmp_path / "pairs.jsonl", trl_pair_rows(pairs, get_task("toy")))  # TRL's own format
    training = {"global_batch_size": 2, "per_device_batch_size": 2, "learning_rate": 1.0e-2, "max_steps": 2,
                "save_steps": 1, "max_length": 512}
    plan = build_plan(plan_config(tmp_path, {"dataset": {"name_or_path": data}, "training": training,
                                             "log_every": 1}))
    results = run_plan(plan)
    out = plan.stages["dpo"].out_dir
    assert results["dpo"]["pairs"]["kept"] == 4 and results["dpo"]["steps"] == 2
    assert_finished_stage_dir(out, 2)
    card = (out / "model" / "README.md").read_text()
    assert f"- Data: `{data}` (4 rows)" in card and f"- Starting checkpoint: `{TOY_CHECKPOINT}`" in card
    assert "The training rows have no system prompt." in card and pairs[0]["question"] in card
    assert run_card_snippet(card)  # loads the saved model by the path the card names and generates


def test_sft_stage_trains_from_a_users_file_and_its_card_says_how_to_prompt(tmp_path):
    gsm8k = get_task("gsm8k")
    rows = [{"prompt": Q.replace("3", str(n)), "completion": C} for n in range(4)]  # plain text: the task wraps it
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    training = {"global_batch_size": 2, "per_device_batch_size": 2, "learning_rate": 1.0e-3, "max_steps": 4,
                "save_steps": 2, "max_length": 512}
    config = {"experiment": "u", "runs_dir": str(tmp_path / "runs"), "seed": 0, "wandb": {"mode": "disabled"},
              "stages": {"sft": {"kind": "sft", "task": "gsm8k", "model": {"name_or_path": str(TOY_CHECKPOINT)},
                                 "dataset": {"name_or_path": data}, "training": training}}}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = build_plan(str(path))
    results = run_plan(plan)
    out = plan.stages["sft"].out_dir
    assert results["sft"]["samples"] == 4 and results["sft"]["steps"] == 4
    assert_finished_stage_dir(out, 4)
    card = (out / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\ntags: [marco-train, sft]\n---\n")
    assert gsm8k.system_prompt in card and "Every training row has this system prompt." in card
    assert "`<thinking>…</thinking>`" in card and "`<answer>…</answer>`" in card
    assert json.dumps([{"role": "system", "content": gsm8k.system_prompt}, {"role": "user", "content": rows[0][
        "prompt"]}]) in card  # the snippet's messages: the prompt contract's
    assert run_card_snippet(card)
