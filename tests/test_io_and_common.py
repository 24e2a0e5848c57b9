"""File plumbing and training glue: line-numbered JSONL errors, torn tails, atomic writes, batch maths."""

import pytest

from marco_train.config import ConfigError
from marco_train.io import DataError, append_jsonl, atomic_write_json, hash_path, read_jsonl, repair_jsonl_tail
from marco_train.models import (
    load_model,
    load_tokenizer,
    resolve_attention,
    resolve_dtype,
    resolve_gradient_checkpointing,
)
from marco_train.tasks import get_task, load_problems_file, select_problems
from marco_train.train.common import gradient_accumulation, resolve_precision


def test_read_jsonl_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "question": "q", "answer": "1"}\n{"id": 2, "question": "q2"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: missing field 'answer'"):
        load_problems_file(path)
    path.write_text('{"id": 1, "question": "q", "answer": "1"}\n{"id": 2, "question": \n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not valid JSON"):
        load_problems_file(path)
    path.write_text("")
    with pytest.raises(DataError, match="no problems in file"):
        load_problems_file(path)


def test_first_problem_and_num_problems_select_a_slice_in_file_order(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"id": "p{i}", "question": "q{i}", "answer": "{i}"}}\n' for i in range(6)))
    toy = get_task("toy")
    assert [p.id for p in select_problems(toy, str(path), "", 2, 3)] == ["p2", "p3", "p4"]
    assert [p.id for p in select_problems(toy, str(path), "", 4, 0)] == ["p4", "p5"]  # 0 = all the rest
    assert [p.id for p in select_problems(toy, str(path), "", 4, 9)] == ["p4", "p5"]
    assert [p.id for p in select_problems(toy, str(path), "", 0, 2)] == ["p0", "p1"]
    with pytest.raises(DataError, match=r"p.jsonl: first_problem=6 skips all of its 6 problems; lower it"):
        select_problems(toy, str(path), "", 6, 0)


def test_torn_tail_is_repaired(tmp_path):
    path = tmp_path / "shard.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "b"')  # what a kill mid-write leaves
    assert [r["a"] for r in read_jsonl(path, allow_torn_tail=True)] == [1, 2]
    assert repair_jsonl_tail(path) == len('{"a": 3, "b"')
    assert [r["a"] for r in read_jsonl(path)] == [1, 2]


def test_atomic_write_and_hash(tmp_path):
    atomic_write_json(tmp_path / "d" / "x.json", {"b": 1})
    assert (tmp_path / "d" / "x.json").read_text() == '{\n  "b": 1\n}\n'
    assert list((tmp_path / "d").iterdir()) == [tmp_path / "d" / "x.json"]  # no temp file left
    before = hash_path(tmp_path / "d")
    (tmp_path / "d" / "x.json").write_text('{\n  "b": 2\n}\n')
    assert hash_path(tmp_path / "d") != before


def test_global_batch_is_fixed_across_world_sizes():
    assert [gradient_accumulation(32, 4, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="not a multiple"):
        gradient_accumulation(32, 3, 2)


def test_cpu_defaults():
    import torch

    assert resolve_precision("auto") == "fp32" and resolve_dtype("auto") == torch.float32
    assert resolve_gradient_checkpointing(None) is False and resolve_gradient_checkpointing(True) is True
    assert resolve_attention("auto") == "sdpa"


def test_a_missing_model_directory_is_named_not_taken_for_a_hub_id(tmp_path):
    missing = tmp_path / "cache" / "smollm2-135m-instruct"
    for load in (load_tokenizer, load_model):
        with pytest.raises(FileNotFoundError, match=rf"^{missing}: no such model directory; .* "
                                                    r"\(SmolLM2: run `marco-train prepare-smollm2` first\)$"):
            load(str(missing))
    with pytest.raises(FileNotFoundError, match=r"^\./nowhere/model: no such model directory; point model"):
        load_model("./nowhere/model")
    assert load_tokenizer("marco_train/toy/checkpoint").encode("<answer>")  # a relative directory that exists
