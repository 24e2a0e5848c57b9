"""Split: terciles, SFT selection, pair rules, shared-prefix length, drops by reason (hand-made trees)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from marco_train.data import split as S
from marco_train.data.paths import extract_paths
from marco_train.data.trees import parse_tree, read_trees
from marco_train.io import DataError
from marco_train.prompts import prompt_ids, response_ids
from marco_train.stages.split import Config, build_split
from marco_train.tasks import get_task

SUB = "Firstly, I need to break down this task. There are 1 steps."


def make_tree(pid, question, answer, nodes):
    """nodes: (id, parent, type, body, terminal, correct); text = "\\n"-separated tagged segments."""
    out = [{"id": 0, "parent": None, "type": "root", "text": "", "is_terminal": False, "correct": None}]
    for nid, parent, type_, body, terminal, correct in nodes:
        out.append({"id": nid, "parent": parent, "type": type_, "is_terminal": terminal, "correct": correct,
                    "text": ("" if parent == 0 else "\n") + f"<{type_}>{body}</{type_}>",
                    "answer": body.rsplit(" ", 1)[-1] if terminal else None, "visits": 1, "confidence": None})
    return {"problem_id": pid, "question": question, "answer": answer, "task": "toy", "fingerprint": "t",
            "nodes": out}


TREE_A = make_tree("a", "Compute 1 + 2.", "3", [
    (1, 0, "sub_task", SUB, False, None),
    (2, 1, "thinking", "1 + 2 = 3", False, None),
    (3, 2, "answer", "The answer is: 3", True, True),       # S T A          shortest correct
    (4, 2, "double_check", "Check: 1 + 2 = 3. Correct.", False, None),
    (5, 4, "answer", "The answer is: 3", True, True),       # S T D A        medium
    (6, 1, "thinking", "1 + 2 = 4", False, None),
    (7, 6, "answer", "The answer is: 4", True, False),      # S T' A         wrong, diverges inside T
    (8, 4, "thinking", "3 = 3", False, None),
    (9, 8, "answer", "The answer is: 3", True, True),       # S T D T A      longest
    (10, 4, "answer", "The answer is: 5", True, False),     # S T D A'       wrong, diverges after D
])
TREE_B = make_tree("b", "Compute 1 + 1.", "2", [  # only correct paths (+ a duplicate text)
    (1, 0, "sub_task", "Go.", False, None),
    (2, 1, "thinking", "1 + 1 = 2", False, None),
    (3, 2, "answer", "The answer is: 2", True, True),
    (4, 2, "double_check", "ok", False, None),
    (5, 4, "answer", "The answer is: 2", True, True),
    (6, 2, "answer", "The answer is: 2", True, True),       # same text as 3
])
TREE_C = make_tree("c", "Compute 2 + 2.", "4", [(1, 0, "sub_task", "Go.", False, None),
                                                (2, 1, "answer", "The answer is: 5", True, False)])
TREE_D = make_tree("d", "Compute 3 + 3.", "6", [(1, 0, "sub_task", "Go.", False, None),
                                                (2, 1, "answer", "The answer is: 6", True, None)])


def trees(*records):
    return [parse_tree(r, f"mem:{i + 1}") for i, r in enumerate(records)]


def cfg(**kw):
    return OmegaConf.structured(Config(**kw))


def text_of(record, leaf):
    by_id = {n["id"]: n for n in record["nodes"]}
    chain = []
    while leaf is not None:
        chain.append(by_id[leaf]["text"])
        leaf = by_id[leaf]["parent"]
    return "".join(reversed(chain))


# ----------------------------------------------------------------------------------------------- pure functions


def test_tercile_labels_rank_within_the_list():
    L, M, Sh = "longest", "medium", "shortest"
    assert S.tercile_labels([30, 10, 20]) == [L, Sh, M]
    assert S.tercile_labels([4, 1, 3, 2]) == [L, Sh, M, M]
    assert S.tercile_labels([5, 4, 3, 2, 1]) == [L, L, M, Sh, Sh]
    assert S.tercile_labels([1, 2, 3, 4, 5, 6]) == [Sh, Sh, M, M, L, L]
    assert S.tercile_labels([7, 3]) == [L, Sh]
    assert S.tercile_labels([9]) == [L]  # a query's only correct path is its longest
    assert S.tercile_labels([5, 5, 5]) == [Sh, M, L]  # ties keep input order
    assert S.tercile_labels([]) == []


def test_sft_selection_and_pair_rules():
    assert S.select_sft([1, 2, 3], ["shortest", "medium", "longest"], ["longest"], 1) == [2]
    assert S.select_sft([1, 2, 3], ["shortest", "medium", "longest"], ["medium", "longest"], 0) == [2, 1]
    assert S.select_sft([1, 2], ["shortest", "longest"], ["medium"], 1) == []
    assert S.choose_index([5, 3, 3, 9], "shortest") == 1
    assert S.choose_index([5, 3, 3, 9], "longest") == 3
    assert S.choose_index([9, 9], "longest") == 0
    wrong = [[1, 2, 9], [1, 9], [1, 2, 3, 5]]
    assert S.reject_index([1, 2, 3, 4], wrong, "shortest_prefix") == (1, 1)
    assert S.reject_index([1, 2, 3, 4], wrong, "longest_prefix") == (2, 3)
    picks = {S.reject_index([1, 2, 3, 4], wrong, "random", S.query_rng(seed, "q"))[0] for seed in range(20)}
    assert picks == {0, 1, 2}
    assert S.reject_index([1, 2, 3, 4], wrong, "random", S.query_rng(3, "q")) == \
        S.reject_index([1, 2, 3, 4], wrong, "random", S.query_rng(3, "q"))
    assert S.shared_prefix_len([7, 8], [1, 2, 3], [1, 2, 4]) == 2
    assert S.shared_prefix_len([7, 8], [5], [6]) == 0
    with pytest.raises(ValueError, match="chosen rule 'median'"):
        S.choose_index([1], "median")


def test_shared_prefix_len_on_ids_when_a_bpe_merge_crosses_the_divergence(smollm2_tokenizer):
    """SmolLM2 merges ' rethink' into one token, so the texts' common prefix '... I will re' tokenises to one
    token more than the two sequences really share."""
    tok, task = smollm2_tokenizer, get_task("toy")
    chosen = "<sub_task>I will recheck the sum.</sub_task>"
    rejected = "<sub_task>I will rethink the sum.</sub_task>"
    prompt = prompt_ids(tok, task, "Compute 1 + 2.")
    c, r = response_ids(tok, chosen), response_ids(tok, rejected)
    # '<' 'sub' '_' 'task' '>' 'I' ' will' | ' rec' 'he' 'ck' ... vs ' rethink' ...
    assert tok.convert_ids_to_tokens(c[:8]) == ["<", "sub", "_", "task", ">", "I", "Ġwill", "Ġrec"]
    assert tok.convert_ids_to_tokens(r[7]) == "Ġrethink"
    assert S.shared_prefix_len(prompt, c, r) == 7
    common_text = "<sub_task>I will re"
    assert chosen.startswith(common_text) and rejected.startswith(common_text)
    assert len(tok(common_text, add_special_tokens=False)["input_ids"]) == 8  # text-based counting is wrong


# ----------------------------------------------------------------------------------------------- build_split


def test_paths_terciles_sft_and_pairs_on_hand_made_trees(toy_tokenizer):
    out = build_split(trees(TREE_A, TREE_B, TREE_C, TREE_D), toy_tokenizer, get_task("toy"), cfg(), seed=0)
    assert [r["id"] for r in out["sft"]] == ["a/9", "b/5"]  # the longest correct path per query
    assert out["sft"][0]["response"] == text_of(TREE_A, 9)
    assert out["sft"][0]["tokens"] == len(response_ids(toy_tokenizer, text_of(TREE_A, 9)))
    assert [r["tercile"] for r in out["sft"]] == ["longest", "longest"]
    # chosen = shortest correct (3); rejected = the wrong path sharing the shortest prefix with it (7, not 10)
    (pair,) = out["pairs"]
    assert pair["id"] == "a/3-7"
    assert (pair["chosen"], pair["rejected"]) == (text_of(TREE_A, 3), text_of(TREE_A, 7))
    # '<sub_task>' + 16 sub-task tokens + '</sub_task>' 'Ċ' '<thinking>' '1' 'Ġ+' 'Ġ' '2' 'Ġ=' 'Ġ' | '3' vs '4'
    assert pair["shared_prefix_len"] == 26
    assert pair["chosen_tokens"] == len(response_ids(toy_tokenizer, pair["chosen"]))
    s = out["summary"]
    assert s["paths"] == {"paths": 10, "correct": 5, "wrong": 3, "unscored": 1, "duplicate_text": 1, "too_long": 0}
    assert s["sft"]["dropped"] == {"no_correct_path": 1, "no_scored_path": 1}
    assert s["pairs"]["dropped"] == {"no_correct_path": 1, "no_scored_path": 1, "no_wrong_path": 1}
    assert s["lengths"]["shortest"]["count"] == 2 and s["lengths"]["longest"]["count"] == 2
    assert s["lengths"]["medium"]["count"] == 1


@pytest.mark.parametrize("chosen,rejected,expect_id,expect_shared", [
    ("shortest", "shortest_prefix", "a/3-7", 26),
    ("shortest", "longest_prefix", "a/3-10", 29),   # shares S 'Ċ' T 'Ċ' (29 tokens) with path 3
    ("longest", "shortest_prefix", "a/9-7", 26),
    ("longest", "longest_prefix", "a/9-10", None),
])
def test_pair_rules_pick_the_expected_paths(toy_tokenizer, chosen, rejected, expect_id, expect_shared):
    out = build_split(trees(TREE_A), toy_tokenizer, get_task("toy"), cfg(chosen=chosen, rejected=rejected), seed=0)
    (pair,) = out["pairs"]
    assert pair["id"] == expect_id
    c, r = response_ids(toy_tokenizer, pair["chosen"]), response_ids(toy_tokenizer, pair["rejected"])
    true_common = next(i for i, (x, y) in enumerate(zip(c, r)) if x != y)
    assert pair["shared_prefix_len"] == true_common
    if expect_shared is not None:
        assert pair["shared_prefix_len"] == expect_shared


def test_random_rules_are_seeded_per_query(toy_tokenizer):
    runs = [build_split(trees(TREE_A), toy_tokenizer, get_task("toy"), cfg(chosen="random", rejected="random"),
                        seed=s)["pairs"][0]["id"] for s in range(12)]
    assert runs[:3] == [build_split(trees(TREE_A), toy_tokenizer, get_task("toy"),
                                    cfg(chosen="random", rejected="random"), seed=s)["pairs"][0]["id"]
                        for s in range(3)]
    assert {r.split("/")[1].split("-")[0] for r in runs} == {"3", "5", "9"}
    assert {r.split("-")[1] for r in runs} == {"7", "10"}


def test_global_terciles_and_max_length(toy_tokenizer):
    task = get_task("toy")
    lengths = {p.leaf_id + (100 if p.problem_id == "b" else 0): len(response_ids(toy_tokenizer, p.response))
               for t in trees(TREE_A, TREE_B) for p in extract_paths(t)}
    assert lengths[105] < lengths[3]  # precondition: both of b's correct paths are shorter than all of a's
    out = build_split(trees(TREE_A, TREE_B), toy_tokenizer, task, cfg(tercile_mode="global"), seed=0)
    # pooled correct lengths b3 < b5 < a3 < a5 < a9 -> S S M L L: b has no path in the longest tercile
    assert [r["id"] for r in out["sft"]] == ["a/9"]
    assert out["summary"]["sft"]["dropped"] == {"no_path_in_terciles": 1}
    assert out["summary"]["lengths"]["longest"]["count"] == 2
    # max_length: drop paths whose prompt + response exceed it -> a's longest is now path 5
    limit = len(prompt_ids(toy_tokenizer, task, "Compute 1 + 2.")) + lengths[5]
    out = build_split(trees(TREE_A), toy_tokenizer, task, cfg(max_length=limit), seed=0)
    assert [r["id"] for r in out["sft"]] == ["a/5"]
    assert out["summary"]["paths"]["too_long"] == 1


# ----------------------------------------------------------------------------------------------- process check

TWO = "Firstly, I need to break down this task. There are 2 steps."
TREE_E = make_tree("e", "Compute 1 + 2 + 3.", "6", [
    (1, 0, "sub_task", TWO, False, None),
    (2, 1, "thinking", "1 + 2 = 3", False, None),
    (3, 2, "thinking", "3 + 3 = 6", False, None),
    (4, 3, "answer", "The answer is: 6", True, True),       # right answer, right process (shortest)
    (5, 1, "thinking", "1 + 2 = 4", False, None),
    (6, 5, "thinking", "4 + 2 = 6", False, None),
    (7, 6, "double_check", "Check: 4 + 2 = 6. Correct.", False, None),
    (8, 7, "answer", "The answer is: 6", True, True),       # right answer through a wrong step (longest)
    (9, 3, "answer", "The answer is: 7", True, False),      # wrong answer, diverges after both thinkings
])
TREE_F = make_tree("f", "Compute 2 + 2.", "4", [  # the only correct path has a wrong step
    (1, 0, "sub_task", "Firstly, I need to break down this task. There are 1 steps.", False, None),
    (2, 1, "thinking", "2 + 2 = 5", False, None),
    (3, 2, "answer", "The answer is: 4", True, True),
    (4, 2, "answer", "The answer is: 5", True, False),
])


def test_process_check_keeps_only_process_correct_sft_rows_and_chosen_sides(toy_tokenizer):
    task = get_task("toy")
    off = build_split(trees(TREE_E, TREE_F), toy_tokenizer, task, cfg(process_check=False), seed=0)
    assert [r["id"] for r in off["sft"]] == ["e/8", "f/3"]  # the longest correct path: a wrong process
    assert off["summary"]["process_check"]["checker"] == "off"
    out = build_split(trees(TREE_E, TREE_F), toy_tokenizer, task, cfg(), seed=0)  # on by default
    assert [r["id"] for r in out["sft"]] == ["e/4"]
    assert [r["id"] for r in out["pairs"]] == ["e/4-9"]  # rejected: the only wrong answer
    s = out["summary"]
    assert s["process_check"] == {"checker": "toy step checker", "correct_paths": 3, "passed": 1, "failed": 2,
                                  "failed_by_reason": {"uncaught_wrong_step": 1, "wrong_claim_in_check": 1},
                                  "rejected_wrong_process": 0}
    assert s["sft"]["dropped"] == {"no_process_correct_path": 1}
    assert s["pairs"]["dropped"] == {"no_process_correct_path": 1}
    assert s["paths"]["correct"] == 3  # answers; the process check's counts are beside them


def test_a_right_answer_with_a_wrong_process_may_be_the_rejected_side(toy_tokenizer):
    out = build_split(trees(TREE_E), toy_tokenizer, get_task("toy"), cfg(rejected_wrong_process=True), seed=0)
    # candidates 9 (wrong answer; shares both thinkings with 4) and 8 (diverges inside the first thinking)
    assert [r["id"] for r in out["pairs"]] == ["e/4-8"]
    assert out["summary"]["process_check"]["rejected_wrong_process"] == 1
    assert [r["id"] for r in out["sft"]] == ["e/4"]


def test_a_task_without_a_step_checker_keeps_every_correct_path(toy_tokenizer):
    out = build_split(trees(TREE_E), toy_tokenizer, get_task("math500"), cfg(task="math500"), seed=0)
    assert out["summary"]["process_check"]["checker"] == "none (task 'math500' has no step checker)"
    assert out["summary"]["process_check"]["passed"] == out["summary"]["paths"]["correct"]


# ----------------------------------------------------------------------------------------------- teacher != student

def with_teacher_ids(record, key="teacher/model"):
    """The tree as a teacher with another tokenizer wrote it: node token ids under the teacher's key (junk here:
    the split must never read them)."""
    out = json.loads(json.dumps(record))
    for n in out["nodes"]:
        n["token_ids"] = {key: [7] * (len(n["text"]) + 3)}
    return out


def test_split_measures_with_the_students_tokenizer_not_the_teachers(toy_tokenizer, smollm2_tokenizer):
    task = get_task("toy")
    results = {}
    for name, tok in (("toy", toy_tokenizer), ("smollm2", smollm2_tokenizer)):
        out = build_split(trees(with_teacher_ids(TREE_A)), tok, task, cfg(), seed=0)
        (pair,) = out["pairs"]
        c, r = response_ids(tok, pair["chosen"]), response_ids(tok, pair["rejected"])
        assert (pair["chosen_tokens"], pair["rejected_tokens"]) == (len(c), len(r))
        prompt = prompt_ids(tok, task, TREE_A["question"])
        assert pair["shared_prefix_len"] == S.common_prefix_len(prompt + c, prompt + r) - len(prompt)
        assert [row["tokens"] for row in out["sft"]] == [len(response_ids(tok, row["response"])) for row in out["sft"]]
        results[name] = (pair["id"], pair["chosen_tokens"], pair["shared_prefix_len"], out["sft"][0]["tokens"])
    assert results["toy"][0] == results["smollm2"][0] == "a/3-7"  # the same texts are selected ...
    assert results["toy"][1:] != results["smollm2"][1:]  # ... and measured in each student's own tokens


# ----------------------------------------------------------------------------------------------- bad input


def test_malformed_tree_lines_name_file_line_and_field(tmp_path):
    good = json.dumps(TREE_A)
    path = tmp_path / "rank-00000.jsonl"
    path.write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"rank-00000.jsonl:2: not valid JSON"):
        list(read_trees(path))
    bad = json.loads(good)
    del bad["nodes"][3]["text"]
    path.write_text(good + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"rank-00000.jsonl:3: tree 'a' nodes\[3\]: missing field 'text'"):
        list(read_trees(path))
    bad = json.loads(good)
    bad["nodes"][2]["is_terminal"] = "yes"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"rank-00000.jsonl:1: tree 'a' nodes\[2\]: field 'is_terminal' must be bool"):
        list(read_trees(path))
    bad = json.loads(good)
    bad["nodes"][5]["parent"] = 99
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"rank-00000.jsonl:1: tree 'a' node 5: field 'parent' names unknown node 99"):
        list(read_trees(path))
    path.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "question"}) + "\n")
    with pytest.raises(DataError, match=r"rank-00000.jsonl:1: missing field 'question'"):
        list(read_trees(path))
