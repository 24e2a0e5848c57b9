"""Pair tokenization and checks (marco_train/train/dpo_data.py) and the two batch layouts."""

import pytest
import torch

from dpo_testlib import common_prefix_len, toy_pairs
from marco_train.io import DataError
from marco_train.prompts import prompt_ids, response_ids
from marco_train.tasks import get_task
from marco_train.train.dpo_data import PairCollator, split_pair, tokenize_pairs
from marco_train.train.prefix_sharing import dense_tree_mask

TASK = get_task("toy")


def test_pairs_are_split_at_the_token_divergence(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 6)
    examples, stats = tokenize_pairs(rows, toy_tokenizer, TASK, max_length=4096)
    assert (stats.total, stats.kept, stats.truncated) == (6, 6, 0)
    assert (stats.dropped_no_divergence, stats.dropped_too_long) == (0, 0)
    for row, e in zip(rows, examples):
        prompt = prompt_ids(toy_tokenizer, TASK, row["question"])
        chosen, rejected = response_ids(toy_tokenizer, row["chosen"]), response_ids(toy_tokenizer, row["rejected"])
        assert e["prompt_ids"] == prompt
        assert e["prefix_ids"] + e["chosen_ids"] == chosen and e["prefix_ids"] + e["rejected_ids"] == rejected
        assert len(e["prefix_ids"]) == row["shared_prefix_len"] > 0
        assert e["chosen_ids"][0] != e["rejected_ids"][0]  # the suffixes start at the first differing token
        assert e["chosen_ids"][-1] == e["rejected_ids"][-1] == toy_tokenizer.eos_token_id


def test_a_wrong_shared_prefix_len_is_an_error_naming_the_row(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 3)
    rows[1]["shared_prefix_len"] += 1
    with pytest.raises(DataError, match=r"pairs.arrow: row 1 \(id 'pair-1'\): shared_prefix_len is \d+ but .* gives"):
        tokenize_pairs(rows, toy_tokenizer, TASK, 4096, source="pairs.arrow")


def test_without_shared_prefix_len_the_prefix_is_computed(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 3)
    want, _ = tokenize_pairs(rows, toy_tokenizer, TASK, 4096)
    got, _ = tokenize_pairs([{k: v for k, v in r.items() if k != "shared_prefix_len"} for r in rows], toy_tokenizer,
                            TASK, 4096)
    assert got == want and [len(e["prefix_ids"]) for e in got] == [r["shared_prefix_len"] for r in rows]


def test_identical_pairs_are_dropped_and_counted(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 3)
    rows[0]["rejected"] = rows[0]["chosen"]
    rows[0]["shared_prefix_len"] = len(response_ids(toy_tokenizer, rows[0]["chosen"]))
    examples, stats = tokenize_pairs(rows, toy_tokenizer, TASK, 4096)
    assert stats.dropped_no_divergence == 1 and stats.kept == 2
    assert [e["id"] for e in examples] == ["pair-1", "pair-2"] and [e["pair_index"] for e in examples] == [0, 1]


def test_missing_field_and_nothing_left_are_clear_errors(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 2)
    del rows[1]["question"]
    with pytest.raises(DataError, match="row 1: missing field 'question'"):
        tokenize_pairs(rows, toy_tokenizer, TASK, 4096)
    rows = toy_pairs(toy_tokenizer, 2)
    with pytest.raises(DataError, match="no usable pair among 2"):
        tokenize_pairs(rows, toy_tokenizer, TASK, max_length=10)


def test_over_long_pairs_are_cut_inside_the_shared_reasoning():
    prompt, chosen, rejected = [1, 2, 3], [10, 11, 12, 13, 14, 20, 21, 2], [10, 11, 12, 13, 14, 30, 2]
    # longest sequence = 3 + 8 = 11 tokens; shared response prefix = 5 tokens.
    status, e = split_pair(prompt, chosen, rejected, max_length=11)
    assert status == "kept" and e["prefix_ids"] == [10, 11, 12, 13, 14]
    status, e = split_pair(prompt, chosen, rejected, max_length=8)  # 3 tokens too many: the first 3 shared go
    assert status == "truncated"
    assert e == {"prompt_ids": [1, 2, 3], "prefix_ids": [13, 14], "chosen_ids": [20, 21, 2], "rejected_ids": [30, 2]}
    assert len(e["prompt_ids"] + e["prefix_ids"] + e["chosen_ids"]) == 8
    assert split_pair(prompt, chosen, rejected, max_length=6)[1]["prefix_ids"] == []  # all 5 shared tokens cut
    assert split_pair(prompt, chosen, rejected, max_length=5)[0] == "too_long"  # would need 6 of the 5 shared
    assert split_pair(prompt, chosen, rejected, max_length=8, truncation="drop")[0] == "too_long"
    assert split_pair(prompt, [5, 2], [5, 2], max_length=99)[0] == "no_divergence"


def test_truncation_counts_on_real_pairs(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 8)
    examples, _ = tokenize_pairs(rows, toy_tokenizer, TASK, 4096)
    longest = [len(e["prompt_ids"]) + len(e["prefix_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"]))
               for e in examples]
    limit = sorted(longest)[4] - 3
    cut, stats = tokenize_pairs(rows, toy_tokenizer, TASK, limit)
    assert stats.truncated >= 1 and stats.kept + stats.dropped_too_long == 8
    for e in cut:
        assert len(e["prompt_ids"]) + len(e["prefix_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) <= limit
    dropped, stats = tokenize_pairs(rows, toy_tokenizer, TASK, limit, truncation="drop")
    assert stats.truncated == 0 and stats.dropped_too_long == sum(n > limit for n in longest)


PAIRS = [{"pair_index": 7, "prompt_ids": [1, 2], "prefix_ids": [3], "chosen_ids": [4, 5], "rejected_ids": [6]},
         {"pair_index": 8, "prompt_ids": [9], "prefix_ids": [], "chosen_ids": [10], "rejected_ids": [11, 12]}]


def test_unshared_layout_by_hand():
    b = PairCollator(pad_token_id=0)(PAIRS)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [9, 10, 0, 0, 0], [1, 2, 3, 6, 0], [9, 11, 12, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    # (row, position) predicting each scored token, the token, and its segment (pair*4 + segment)
    rows, pos = b["score_index"] // 5, b["score_index"] % 5
    assert list(zip(rows.tolist(), pos.tolist(), b["score_target"].tolist(), b["score_segment"].tolist())) == [
        (0, 1, 3, 0), (0, 2, 4, 1), (0, 3, 5, 1), (1, 0, 10, 5), (2, 1, 3, 2), (2, 2, 6, 3), (3, 0, 11, 7),
        (3, 1, 12, 7)]
    assert b["segment_tokens"].tolist() == [[1, 2, 1, 1], [0, 1, 0, 2]]
    assert b["pair_index"].tolist() == [7, 8] and int(b["prefix_shared"]) == 0
    skipped = PairCollator(pad_token_id=0, score_prefix=False)(PAIRS)
    assert 0 not in skipped["score_segment"].tolist() and len(skipped["score_target"]) == 6


def test_shared_tree_layout_by_hand():
    b = PairCollator(pad_token_id=0, shared=True)(PAIRS)
    # pair 0: trunk [1, 2] | last 3, chosen 4 5 | last 3, rejected 6 ; pair 1: trunk [] | 9, 10 | 9, 11, 12
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 6], [9, 10, 9, 11, 12, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 0, 1, 2, 0, 0]]
    rows, pos = b["score_index"] // 7, b["score_index"] % 7
    assert list(zip(rows.tolist(), pos.tolist(), b["score_target"].tolist(), b["score_segment"].tolist())) == [
        (0, 1, 3, 0), (0, 2, 4, 1), (0, 3, 5, 1), (0, 5, 6, 3), (1, 0, 10, 5), (1, 2, 11, 7), (1, 3, 12, 7)]
    mask = dense_tree_mask(b["seq_ids"], b["branch_ids"])
    m = mask[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 1, 0, 0],
                 [1, 1, 0, 0, 0, 1, 0],  # the rejected branch sees the trunk, not the chosen branch
                 [1, 1, 0, 0, 0, 1, 1]]
    pad_rows = mask[1, 0, 5:].int().tolist()
    assert pad_rows == [[0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1]]  # padding only sees itself
    assert int(b["prefix_shared"]) == 1
    additive = dense_tree_mask(b["seq_ids"], b["branch_ids"], torch.float32)
    assert additive.dtype == torch.float32 and torch.equal(additive == 0, mask)


def test_packed_layouts_by_hand():
    """Every piece back to back in one row, no padding; position ids restart; trees keep apart by seq id."""
    b = PairCollator(pad_token_id=0, shared=True, packed=True)(PAIRS)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 6, 9, 10, 9, 11, 12]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 0, 1, 0, 1, 2]]
    assert b["seq_ids"].tolist() == [[0] * 7 + [1] * 5]
    assert b["branch_ids"].tolist() == [[0, 0, 1, 1, 1, 2, 2, 1, 1, 2, 2, 2]]
    assert list(zip(b["score_index"].tolist(), b["score_target"].tolist(), b["score_segment"].tolist())) == [
        (1, 3, 0), (2, 4, 1), (3, 5, 1), (5, 6, 3), (7, 10, 5), (9, 11, 7), (10, 12, 7)]
    mask = dense_tree_mask(b["seq_ids"], b["branch_ids"])[0, 0].int()
    assert mask[7:, :7].sum() == 0 and mask[:7, 7:].sum() == 0  # the second tree never sees the first
    assert mask[9:, 7:].tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]  # its rejected branch
    unshared = PairCollator(pad_token_id=0, packed=True)(PAIRS)  # all chosen sequences, then all rejected
    assert unshared["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 10, 1, 2, 3, 6, 9, 11, 12]]
    assert unshared["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3, 0, 1, 2]]
    assert "attention_mask" not in unshared and "seq_ids" not in unshared  # transformers splits at position 0
    assert unshared["score_index"].tolist() == [1, 2, 3, 5, 8, 9, 11, 12]
    collate = PairCollator(pad_token_id=0, shared=True)
    assert [collate.tokens(p) for p in PAIRS] == [7, 5] and [collate.scored(p) for p in PAIRS] == [4, 3]
    assert [PairCollator(0).tokens(p) for p in PAIRS] == [9, 5]


def test_cached_reference_column_is_passed_through():
    with_ref = [dict(p, ref_logps=[-1.0, -2.0, -3.0, -4.0 - i]) for i, p in enumerate(PAIRS)]
    b = PairCollator(pad_token_id=0)(with_ref)
    assert b["ref_logps"].tolist() == [[-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0, -3.0, -5.0]]


def test_common_prefix_helper_agrees():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
