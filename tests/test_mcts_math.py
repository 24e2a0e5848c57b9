"""The search's math, by hand: confidence, UCT choice, backpropagation, rewards, reflection anchors, stopping
rules (distinct vs the authors' counting) and the node policy. No model."""

import math
import random

import pytest
from omegaconf import OmegaConf

from marco_train.engines.confidence import mean_confidence, step_confidence, token_confidence
from marco_train.mcts.policy import Policy
from marco_train.mcts.tree import (
    StopRules,
    Tree,
    backpropagate,
    path_confidence,
    record_rollout,
    reflection_anchor,
    reward,
    select_child,
    stop_reason,
    uct,
)
from marco_train.stages.mcts import Config
from marco_train.tasks.base import Problem

PROBS = [0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02]  # a 7-token vocabulary; the top 5 hold 0.95


def test_confidence_from_given_logprobs_by_hand():
    top5 = [math.log(p) for p in PROBS[:5]]
    assert token_confidence(math.log(0.5), top5) == pytest.approx(0.5 / 0.95, abs=1e-12)
    assert token_confidence(math.log(0.05), top5) == pytest.approx(0.05 / 0.95, abs=1e-12)
    # sampled token outside the top 5: its own probability over the top-5 mass (< 1/5), not widened
    assert token_confidence(math.log(0.02), top5) == pytest.approx(0.02 / 0.95, abs=1e-12)
    assert mean_confidence([0.5 / 0.95, 0.02 / 0.95]) == pytest.approx(0.52 / 1.9)
    assert mean_confidence([]) is None


def test_vectorised_confidence_uses_the_raw_log_softmax():
    import torch

    logits = torch.log(torch.tensor([PROBS, PROBS[::-1]])) + torch.tensor([[3.0], [-1.0]])  # shifts change nothing
    c, lp, top_lp, top_ids = step_confidence(logits, torch.tensor([6, 6]))
    assert c.tolist() == pytest.approx([0.02 / 0.95, 0.5 / 0.95], abs=1e-6)
    assert lp.tolist() == pytest.approx([math.log(0.02), math.log(0.5)], abs=1e-6)
    assert top_ids[0].tolist() == [0, 1, 2, 3, 4] or top_ids[0].tolist() == [0, 1, 3, 2, 4]
    assert torch.exp(top_lp).sum(-1).tolist() == pytest.approx([0.95, 0.95], abs=1e-6)
    # the same logits divided by a temperature would give another number: the engine must not do that
    c_tempered, *_ = step_confidence(logits / 0.5, torch.tensor([6, 6]))
    assert abs(c_tempered[0].item() - 0.02 / 0.95) > 1e-3


def chain_tree():
    """root -> sub_task(1) -> thinking(2) -> double_check(3) -> answer(4); thinking(2) -> thinking(5)."""
    tree = Tree(Problem("p", "Compute 1 + 2.", "3"), random.Random(0))
    sub = tree.add(tree.root, "sub_task", "<sub_task>s</sub_task>")
    th = tree.add(sub, "thinking", "\n<thinking>t</thinking>", conf_sum=1.8, generated=2)
    dc = tree.add(th, "double_check", "\n<double_check>d</double_check>", conf_sum=0.5, generated=1)
    ans = tree.add(dc, "answer", "\n<answer>The answer is: 4</answer>", conf_sum=0.7, generated=1)
    ans.is_terminal, ans.correct = True, False
    other = tree.add(th, "thinking", "\n<thinking>u</thinking>")
    return tree, sub, th, dc, ans, other


def test_uct_choice_unvisited_first_then_the_formula_by_hand():
    tree, sub, th, dc, ans, other = chain_tree()
    a, b = tree.add(tree.root, "sub_task", "a"), tree.add(tree.root, "sub_task", "b")
    tree.root.visits, sub.visits = 10, 0
    a.visits, a.value, b.visits, b.value = 4, 3.0, 6, 3.0
    assert select_child(tree.root, 1.414, tree.rng) is sub  # unvisited first, in expansion order
    sub.visits, sub.value = 1, 0.0  # UCT = 0 + 1.414 * sqrt(2 ln 10 / 1) = 3.0343
    assert uct(a, 10, 1.414) == pytest.approx(0.75 + 1.414 * math.sqrt(2 * math.log(10) / 4))  # 2.2672
    assert uct(b, 10, 1.414) == pytest.approx(0.5 + 1.414 * math.sqrt(2 * math.log(10) / 6))  # 1.7388
    assert select_child(tree.root, 1.414, tree.rng) is sub
    sub.visits, sub.value = 4, 3.0 - 1e-9  # now a wins by a hair
    assert select_child(tree.root, 1.414, tree.rng) is a
    assert select_child(tree.root, 0.0, tree.rng) is a  # pure exploitation: Q/N 0.75 > 0.5
    sub.value = 3.0  # exact tie between sub and a: the tree's seeded RNG decides, the same way every time
    picks = {select_child(tree.root, 1.414, random.Random(seed)).text for seed in range(20)}
    assert picks == {"<sub_task>s</sub_task>", "a"}
    assert [select_child(tree.root, 1.414, random.Random(s)).id for s in range(5)] == \
        [select_child(tree.root, 1.414, random.Random(s)).id for s in range(5)]


def test_backpropagated_visit_and_value_sums():
    tree, sub, th, dc, ans, other = chain_tree()
    backpropagate(ans, 1.0)
    backpropagate(ans, 0.0)
    backpropagate(other, 0.25)
    assert [(n.visits, n.value) for n in (tree.root, sub, th, dc, ans, other)] == \
        [(3, 1.25), (3, 1.25), (3, 1.25), (2, 1.0), (2, 1.0), (1, 0.25)]


def test_rewards_verified_confidence_and_mixed():
    tree, sub, th, dc, ans, other = chain_tree()
    # path confidence: (1.8 + 0.5 + 0.7) / (2 + 1 + 1) generated tokens
    assert path_confidence(ans) == pytest.approx(0.75)
    assert path_confidence(sub) is None
    assert reward(ans, "verified") == 0.0
    assert reward(ans, "confidence") == pytest.approx(0.75)
    assert reward(ans, "mixed", 0.5) == pytest.approx(0.375)
    ans.correct = True
    assert reward(ans, "mixed", 0.8) == pytest.approx(0.8 + 0.2 * 0.75)


def test_reflection_anchor_is_the_nearest_configured_ancestor():
    tree, sub, th, dc, ans, other = chain_tree()
    assert reflection_anchor(ans, "double_check") is dc
    refl = tree.add(dc, "reflection", "\n<reflection>r</reflection>")
    tfs = tree.add(refl, "thinking_from_scratch", "\n<thinking_from_scratch>x</thinking_from_scratch>")
    dc2 = tree.add(tree.add(tfs, "thinking", "t"), "double_check", "d2")
    ans2 = tree.add(dc2, "answer", "a2")
    assert reflection_anchor(ans2, "double_check") is dc2
    assert reflection_anchor(ans2, "sub_task") is sub
    assert reflection_anchor(ans2, "hypothesis") is None
    assert reflection_anchor(sub, "root") is None  # the root is never an anchor


def rollouts(tree, leaves):
    for leaf in leaves:
        record_rollout(tree, leaf)


def test_stopping_rules_with_distinct_counting_and_the_authors_counting():
    tree, sub, th, dc, ans, other = chain_tree()
    ans.correct = True
    rules, authors = StopRules(), StopRules(count_distinct=False)
    rollouts(tree, [ans] * 8)  # the same correct leaf revisited 8 times
    assert tree.correct_count == 1 and tree.correct_rollouts == 8
    assert stop_reason(tree, rules) == ""
    assert stop_reason(tree, authors) == "enough_correct"

    tree = Tree(Problem("p", "q", "3"), random.Random(0))
    leaves = [tree.add(tree.root, "answer", str(i)) for i in range(8)]
    for leaf in leaves:
        leaf.correct = True
    wrong = tree.add(tree.root, "answer", "w")
    wrong.correct = False
    rollouts(tree, leaves[:4] + [wrong] * 28)  # 32 iterations, 4 distinct correct
    assert (tree.iterations, tree.correct_count) == (32, 4)
    assert stop_reason(tree, rules) == ""  # needs MORE than 32 iterations
    rollouts(tree, [wrong])
    assert stop_reason(tree, rules) == "enough_correct_after_min_iterations"

    tree = Tree(Problem("p", "q", "3"), random.Random(0))
    leaf = tree.add(tree.root, "answer", "x")
    leaf.correct = True
    rollouts(tree, [leaf] * 127)  # 127 correct rollouts but one distinct answer node
    assert stop_reason(tree, rules) == ""
    assert stop_reason(tree, authors) == "enough_correct"
    rollouts(tree, [leaf])
    assert stop_reason(tree, rules) == "gave_up"

    tree = Tree(Problem("p", "q", "3"), random.Random(0))
    rollouts(tree, leaves[:8])
    assert stop_reason(tree, rules) == "enough_correct"


def test_identical_response_texts_count_once_for_the_stop_rule():
    """Two terminals (e.g. under two double-checks that said the same) with one response text are one path."""
    tree = Tree(Problem("p", "q", "3"), random.Random(0))
    checks = [tree.add(tree.root, "double_check", "<double_check>Check: 1 + 2 = 3. Correct.</double_check>")
              for _ in range(2)]
    twins = [tree.add(dc, "answer", "\n<answer>The answer is: 3</answer>") for dc in checks]
    for leaf in twins:
        leaf.correct = True
    rollouts(tree, twins)
    assert tree.correct_count == 1 and tree.correct_rollouts == 2
    assert stop_reason(tree, StopRules(stop_correct=2)) == ""
    assert stop_reason(tree, StopRules(stop_correct=2, count_distinct=False)) == "enough_correct"


def policy(**overrides):
    return Policy(OmegaConf.merge(OmegaConf.structured(Config), overrides))


def test_policy_transition_matrix_prefills_depth_cap_and_granularities():
    p = policy()
    assert p.problems() == []
    assert p.expansions("root", 0) == [("sub_task", 2)]
    assert p.expansions("thinking", 3) == [("double_check", 2), ("thinking", 2)]
    assert p.expansions("reflection", 4) == [("thinking_from_scratch", 2)]
    assert p.expansions("thinking", 15) == [("answer", 1)]  # depth cap 16: the last node is an answer
    assert p.expansions("answer", 5) == []
    assert p.start_text("sub_task", "", True, "Firstly, I need to break down this task.") == \
        "<sub_task>Firstly, I need to break down this task."
    assert p.start_text("thinking", "<sub_task>x</sub_task>", False, "") == "\n<thinking>"
    refl = p.prefills("reflection")[0]
    assert refl == "Wait! Maybe I made some mistakes! I need to rethink from scratch.</reflection>"
    assert p.closes_itself("reflection", refl) and not p.closes_itself("answer", "The answer is:")
    assert p.stops("double_check") == ("</double_check>",)
    assert policy(**{"node_types": {"thinking": {"children": {"thinking": 0}}}}).expansions("thinking", 2) == \
        [("double_check", 2)]  # a count of 0 drops a default child

    step = policy(granularity="step", step_samples=3)
    assert step.expansions("thinking", 2) == [("step", 3)]
    assert step.stops("step") == ("\n", "</answer>") and step.start_text("step", "x\n", False, "") == ""
    assert step.node_type("step", "<double_check>ok</double_check>\n") == "double_check"
    assert step.node_type("step", "plain words\n") == "step"
    assert step.answer_open("<answer>The answer") and not step.answer_open("<answer>1</answer>")
    mini = policy(granularity="mini_step", mini_step_tokens=64)
    assert mini.max_tokens("mini_step") == 64 and mini.stops("mini_step") == ("</answer>",)
    assert mini.start_text("answer", "abc", False, "The answer is:") == "\n<answer>The answer is:"

    bad = policy(granularity="chunks", max_depth=1, **{"node_types": {"thinking": {"children": {"nope": 1}}}})
    keys = [k for k, _ in bad.problems()]
    assert keys == ["granularity", "node_types.thinking.children.nope", "max_depth"]
