"""The split stage end to end (pipeline subprocess), the authors' v2 reader, and the dataset readers' errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import pipeline
from marco_train.data.authors_format import read_authors_tree
from marco_train.data.paths import extract_paths
from marco_train.data.schema import PAIR_COLUMNS, load_pairs, load_sft, save_rows
from marco_train.io import DataError

CONFIG = "tests/configs/split_sft.yaml"
AUTHORS = Path("tests/fixtures/authors_trees")


def stage_dir(runs: Path, name: str) -> Path:
    (d,) = [p for p in (runs / "split_sft_test").glob(f"{name}-*") if (p / "_DONE.json").exists()]
    return d


def node_values(path: Path) -> dict:
    return {n["node_id"]: n["node_value"] for n in json.loads(path.read_text())}


def authors_response(values: dict, ids) -> str:
    return "".join(values[i] for i in ids).removesuffix("\n")


def test_authors_v2_tree_paths_and_correctness():
    tree = read_authors_tree(AUTHORS / "demo_q1.json")
    assert (tree.problem_id, tree.question, tree.answer) == ("demo_q1", "How many r are in strawberry?", "3")
    paths = {p.leaf_id: p for p in extract_paths(tree)}
    # re-counted visits: 7 has reward 3 of 3 visits; 19 1 of 2 (unscored); 20 never visited (unscored)
    assert {i: p.correct for i, p in paths.items()} == {7: True, 9: False, 16: True, 18: False, 19: None,
                                                         20: None, 24: True}
    # unvisited non-terminal nodes (14, 3) end no path; node 8 has two reflection children (10 and 21)
    assert paths[16].node_ids == [1, 2, 5, 8, 10, 12, 13, 15, 16]
    assert paths[24].node_ids == [1, 2, 5, 8, 21, 22, 23, 24]
    values = node_values(AUTHORS / "demo_q1.json")
    assert paths[7].response == authors_response(values, [2, 4, 6, 7])
    assert paths[7].response.endswith("<answer>The answer is: boxed{3}</answer>")
    assert paths[18].predicted == "4" and paths[7].predicted == "3"
    wrong_only = {p.leaf_id: p.correct for p in extract_paths(read_authors_tree(AUTHORS / "demo_q2.json"))}
    assert wrong_only == {5: False}  # reward 0 over 2 re-counted visits


def test_split_stage_on_authors_trees(tmp_path, toy_tokenizer):
    runs = tmp_path / "runs"
    # math questions (the authors' demo trees): the toy task's step checker cannot read them
    pipeline(CONFIG, f"runs_dir={runs}", f"stages.split.trees_dir={AUTHORS}", "stages.split.process_check=false",
             flags=["--until", "split"])
    out = stage_dir(runs, "split")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "authors"
    assert summary["paths"] == {"paths": 8, "correct": 3, "wrong": 3, "unscored": 2, "duplicate_text": 0,
                                "too_long": 0}
    assert summary["sft"]["dropped"] == {"no_correct_path": 1} and summary["pairs"]["dropped"] == {"no_correct_path": 1}
    values = node_values(AUTHORS / "demo_q1.json")
    sft = load_sft(out / "sft")
    assert sft["id"] == ["demo_q1/16"]  # the longest of the three correct paths
    assert sft[0]["response"] == authors_response(values, [2, 5, 8, 10, 12, 13, 15, 16])
    (pair,) = load_pairs(out / "pairs")
    # chosen: the shortest correct path (7); rejected: the wrong path diverging earliest from it (9, inside
    # the first thinking), not 18 (which shares sub_task, thinking and double_check with 7)
    assert pair["id"] == "demo_q1/7-9"
    assert pair["chosen"] == authors_response(values, [2, 4, 6, 7])
    assert pair["rejected"] == authors_response(values, [2, 5, 8, 9])
    from marco_train.prompts import response_ids

    c, r = response_ids(toy_tokenizer, pair["chosen"]), response_ids(toy_tokenizer, pair["rejected"])
    assert pair["shared_prefix_len"] == next(i for i, (x, y) in enumerate(zip(c, r)) if x != y)


def test_split_stage_outputs(tmp_path, toy_tokenizer):
    from marco_train.prompts import response_ids

    runs = tmp_path / "runs"
    pipeline(CONFIG, f"runs_dir={runs}", flags=["--until", "split"])
    out = stage_dir(runs, "split")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["format"], summary["trees"]) == ("toy", "ours", 16)
    # each fixture tree: 3 correct paths (short, medium, long) and 1 wrong
    assert summary["paths"]["correct"] == 48 and summary["paths"]["wrong"] == 16
    assert {k: summary["lengths"][k]["count"] for k in ("shortest", "medium", "longest")} == \
        {"shortest": 16, "medium": 16, "longest": 16}
    sft, pairs = load_sft(out / "sft"), load_pairs(out / "pairs")
    assert len(sft) == 16 and len(pairs) == 16
    assert all("<reflection>" in r for r in sft["response"])  # the long path is the reflection one
    for row in pairs:
        c, r = response_ids(toy_tokenizer, row["chosen"]), response_ids(toy_tokenizer, row["rejected"])
        assert row["shared_prefix_len"] == next(i for i, (x, y) in enumerate(zip(c, r)) if x != y)
        assert (row["chosen_tokens"], row["rejected_tokens"]) == (len(c), len(r))
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["split/sft_rows"] == 16 and metrics[0]["split/pairs"] == 16
    assert list((out / "wandb").glob("offline-run-*"))
    exported = [json.loads(line) for line in (out / "export" / "trl" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prompt"][-1]["content"], r["chosen"][0]["content"]) for r in exported] == \
        [(r["id"], r["question"], r["chosen"]) for r in pairs]  # the same pairs in TRL's format (tests/test_export.py)
    assert (out / "export" / "llamafactory" / "dataset_info.json").is_file()


def test_split_stage_fails_on_a_malformed_tree_line(tmp_path):
    lines = (Path("tests/fixtures/toy_trees/rank-00000.jsonl")).read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["nodes"][4]["is_terminal"]
    trees = tmp_path / "trees"
    trees.mkdir()
    (trees / "rank-00000.jsonl").write_text("\n".join(lines[:2] + [json.dumps(bad)] + lines[3:]) + "\n")
    proc = pipeline(CONFIG, f"runs_dir={tmp_path / 'runs'}", f"stages.split.trees_dir={trees}",
                    flags=["--until", "split"], check=False)
    assert proc.returncode != 0
    where = f"{trees}/rank-00000.jsonl:3: tree '{bad['problem_id']}' nodes[4]"
    assert f"{where}: missing field 'is_terminal'" in proc.stderr


def test_authors_format_errors_name_file_node_and_field(tmp_path):
    nodes = json.loads((AUTHORS / "demo_q2.json").read_text())
    del nodes[2]["all_path_value"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(nodes, indent=1))
    with pytest.raises(DataError, match=r"t.json: nodes\[2\]: missing field 'all_path_value'"):
        read_authors_tree(path)
    path.write_text('[\n {"node_id": 1,\n  oops}\n]')
    with pytest.raises(DataError, match=r"t.json:3: not valid JSON"):
        read_authors_tree(path)
    nodes = json.loads((AUTHORS / "demo_q2.json").read_text())
    nodes[0]["info"] = {}
    path.write_text(json.dumps(nodes))
    with pytest.raises(DataError, match=r"t.json: root node \(node_id 1\): missing field 'info.ground_truth'"):
        read_authors_tree(path)


def test_pair_and_sft_sets_with_missing_fields_name_file_line_and_field(tmp_path):
    good = {"id": "q/1-2", "problem_id": "q", "question": "Compute 1 + 2.", "chosen": "<answer>3</answer>",
            "rejected": "<answer>4</answer>", "shared_prefix_len": 1, "chosen_tokens": 4, "rejected_tokens": 4}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "rejected"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: missing field 'rejected'"):
        load_pairs(path)
    path.write_text(json.dumps({**good, "shared_prefix_len": "3"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'shared_prefix_len' must be an integer"):
        load_pairs(path)
    path.write_text(json.dumps({**good, "chosen": ""}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'chosen' must be a string \(non-empty\)"):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n")
    assert load_pairs(path)["id"] == ["q/1-2"]
    columns = {k: v for k, v in PAIR_COLUMNS.items() if k != "question"}
    save_rows([good], columns, tmp_path / "pairs")
    with pytest.raises(DataError, match=r"pairs: missing field 'question' \(a column"):
        load_pairs(tmp_path / "pairs")
    (tmp_path / "sft.jsonl").write_text(json.dumps({"id": "q/1", "question": "Compute 1 + 2."}) + "\n")
    with pytest.raises(DataError, match=r"sft.jsonl:1: missing field 'response'"):
        load_sft(tmp_path / "sft.jsonl")


@pytest.mark.parametrize("trees", ["empty.jsonl", "demo_q2.json"])
def test_an_empty_sft_or_pair_set_fails_the_split_and_marks_nothing_done(tmp_path, trees):
    """No trees, or a search that solved nothing: the split fails with the reason, and neither a data set the
    trainers cannot load nor a _DONE.json is left behind (so sft/dpo never start on it)."""
    source = tmp_path / trees
    if trees == "empty.jsonl":
        source.write_text("")
    else:
        source.write_text((AUTHORS / trees).read_text())  # one query, its only scored path wrong
    runs = tmp_path / "runs"
    proc = pipeline(CONFIG, f"runs_dir={runs}", f"stages.split.trees_dir={source}", check=False)
    assert proc.returncode != 0
    (split_dir,) = (runs / "split_sft_test").glob("split-*")
    dropped = "no queries" if trees == "empty.jsonl" else "{'no_correct_path': 1}"
    trees_count = 0 if trees == "empty.jsonl" else 1
    assert (f"error: stages.split: no SFT rows ({dropped} dropped) and no DPO pairs ({dropped} dropped) from "
            f"{trees_count} trees in {source}; the search must solve some queries") in proc.stderr
    assert not (split_dir / "_DONE.json").exists() and not (split_dir / "sft").exists()
    assert json.loads((split_dir / "summary.json").read_text())["sft"]["rows"] == 0  # the counts, for the reason
    assert not list((runs / "split_sft_test").glob("sft-*"))
