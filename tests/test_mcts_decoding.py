"""Test-time search (MCTS decoding, eval/mcts_decoding.py): Test@N and tokens@N on hand-made terminals equal the
hand-computed values; a real search on the toy model never sees the answer, runs exactly N rollouts and counts
every token once; the eval stage refuses a test-time search that would read the ground truth."""

import random

import pytest
from omegaconf import OmegaConf

from marco_train.config import ConfigError
from marco_train.engines.hf_engine import HFEngine
from marco_train.eval.mcts_decoding import DecodingSearch, rollout_records, search_trees, tokens_at
from marco_train.eval.metrics import summarize
from marco_train.mcts.tree import Tree, path_confidence
from marco_train.pipeline import build_plan
from marco_train.tasks import get_task, load_problems_file
from marco_train.tasks.base import Problem


def hand_tree(problem, rollouts, tokens):
    """A root with one answer child per distinct text; `rollouts` lists the texts reached, in order."""
    tree = Tree(problem, random.Random(0))
    terminals = {}
    for text in rollouts:
        if text not in terminals:
            node = tree.add(tree.root, "answer", text)
            node.generated, node.is_terminal = 5, True
            terminals[text] = node
        tree.rollouts.append(terminals[text])
    tree.tokens_by_rollout = dict(tokens)
    return tree


RIGHT_A, WRONG_A = "<answer>The answer is: 5</answer>", "<answer>The answer is: 4</answer>"
RIGHT_B, WRONG_B, OPEN_B = "<answer>The answer is: 9</answer>", "<answer>The answer is: 8</answer>", \
    "<answer>The answer is: 3"


def test_test_at_n_and_tokens_at_n_on_hand_made_terminals():
    a, b = Problem("a", "Compute 2 + 3.", "5"), Problem("b", "Compute 4 + 5.", "9")
    # a: wrong, right, right again (a revisit: it counts), wrong; b: right, wrong, unclosed (no answer), wrong
    tree_a = hand_tree(a, [WRONG_A, RIGHT_A, RIGHT_A, "<answer>The answer is: 7</answer>"], {0: 10, 1: 6, 3: 4})
    tree_b = hand_tree(b, [RIGHT_B, WRONG_B, OPEN_B, WRONG_B], {0: 8, 1: 8, 2: 2})
    task = get_task("toy")
    records = rollout_records(tree_a, task, a) + rollout_records(tree_b, task, b)
    assert [r["rollout"] for r in records] == [0, 1, 2, 3] * 2
    assert [r["correct"] for r in records] == [False, True, True, False, True, False, False, False]
    assert [r["generated_tokens"] for r in records] == [10, 6, 0, 4, 8, 8, 2, 0]
    metrics = summarize(records, test_at=[1, 2, 4])
    # Test@1: a no, b yes -> 1/2; Test@2: both -> 1; Test@4: both -> 1; accuracy 3 of 8 rollouts; no answer 1 of 8
    assert (metrics["test@1"], metrics["test@2"], metrics["test@4"]) == (0.5, 1.0, 1.0)
    assert metrics["accuracy"] == 3 / 8 and metrics["no_answer_rate"] == 1 / 8
    # tokens@N, mean per problem: @1 (10 + 8) / 2 = 9; @2 (16 + 16) / 2 = 16; @4 (20 + 18) / 2 = 19
    assert tokens_at(records, [1, 2, 4]) == {"tokens@1": 9.0, "tokens@2": 16.0, "tokens@4": 19.0}
    # sampling's records count their own response tokens
    samples = [{"id": "a", "response_tokens": 7}, {"id": "a", "response_tokens": 3}, {"id": "b", "response_tokens": 5},
               {"id": "b", "response_tokens": 1}]
    assert tokens_at(samples, [1, 2]) == {"tokens@1": 6.0, "tokens@2": 8.0}


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_real_test_time_search_never_sees_the_answer_and_runs_exactly_n_rollouts(toy_model, toy_tokenizer):
    search = OmegaConf.merge(OmegaConf.structured(DecodingSearch),
                             {"rollouts": 5, "max_depth": 10, "reflect_below_confidence": 0.95})
    problems = load_problems_file("mcts_data/problems/toy_heldout.jsonl")[:3]
    trees = search_trees(HFEngine(toy_model, toy_tokenizer), get_task("toy"), problems, search, seed=0,
                         trees_in_flight=3)
    reflections = 0
    for p in problems:
        tree = trees[p.id]
        assert tree.problem.answer == "" and tree.stop_reason == "rollouts_done"
        assert tree.iterations == len(tree.rollouts) == 5
        assert all(n.correct is None for n in tree.nodes)  # nothing was checked during the search
        assert sum(tree.tokens_by_rollout.values()) == tree.tokens_generated
        assert set(tree.tokens_by_rollout) <= set(range(5))
        for node in tree.nodes:
            if node.type == "reflection":  # only where the path's confidence dropped below the threshold
                reflections += 1
                assert path_confidence(node.parent) < 0.95
        records = rollout_records(tree, get_task("toy"), p)
        assert [r["generated_tokens"] for r in records] == [tree.tokens_by_rollout.get(k, 0) for k in range(5)]
    assert reflections > 0


@pytest.mark.parametrize("override, key", [("stages.eval_base.search.reward=verified", "search.reward"),
                                           ("stages.eval_base.search.reflect_on_wrong=true", "search.reflect_on_wrong"),
                                           ("stages.eval_base.search.rollouts=4", "test_at")])
def test_the_eval_stage_refuses_a_test_time_search_that_reads_the_ground_truth(override, key, tmp_path):
    base = ["stages.eval_base.decoding=mcts", "stages.eval_base.test_at=[1,8]", f"runs_dir={tmp_path}"]
    build_plan("configs/demo.yaml", base)  # valid as it is
    with pytest.raises(ConfigError, match=f"stages.eval_base.{key}"):
        build_plan("configs/demo.yaml", base + [override])
