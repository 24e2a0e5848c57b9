"""The search on the toy model (in-process): tree invariants, reflection grafts, step and mini-step
segmentation, two models, and overlapping siblings giving the same trees as waiting for them."""

import shutil

import pytest
from omegaconf import OmegaConf

from conftest import TOY_CHECKPOINT, tiny_qwen2
from marco_train.engines.hf_engine import HFEngine
from marco_train.mcts.policy import Policy
from marco_train.mcts.search import Searcher, SearchSettings, token_key
from marco_train.mcts.tree import reflection_anchor, response_text, to_record
from marco_train.prompts import parse_response
from marco_train.stages.mcts import Config
from marco_train.tasks import get_task, load_problems_file

REFLECTION = "\n<reflection>Wait! Maybe I made some mistakes! I need to rethink from scratch.</reflection>"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_searcher(model, tokenizer, special=None, **overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load("configs/demo.yaml").stages.mcts,
                          {"max_iterations": 6, "stop_correct": 2, "min_iterations": 4, "min_correct": 1}, overrides)
    return Searcher(Policy(cfg), SearchSettings.from_config(cfg, 5), get_task("toy"), HFEngine(model, tokenizer),
                    special)


def search(searcher, n=2, in_flight=2, start=0):
    problems = load_problems_file("mcts_data/problems/toy_train.jsonl")[start:start + n]
    trees = {}
    searcher.run(problems, lambda tree, live: trees.__setitem__(tree.problem.id, tree), in_flight)
    return [trees[p.id] for p in problems]


@pytest.fixture(scope="module")
def tagged(toy_model, toy_tokenizer):
    searcher = make_searcher(toy_model, toy_tokenizer)
    return searcher, search(searcher)


@pytest.fixture(scope="module")
def tagged_trees(tagged):
    return tagged[1]


def check_ids(searcher, tree):
    """Every node's ids, for every tokenizer that has them, decode to exactly its text."""
    tokenizers = {token_key(e): e.tokenizer for e in (searcher.engine, searcher.special_engine)}
    for node in tree.nodes:
        for key, ids in node.token_ids.items():
            assert tokenizers[key].decode(ids) == node.text, (key, node.id)


def test_tree_invariants(tagged):
    searcher, trees = tagged
    for tree in trees:
        root = tree.root
        assert (root.type, root.text, root.parent) == ("root", "", None)
        assert root.visits == tree.iterations and tree.stop_reason
        assert all(n.pending is None for n in tree.nodes)
        for node in tree.nodes[1:]:
            assert node.text.startswith("<sub_task>" if node.parent is root else "\n<" + node.type + ">")
            assert node.text.endswith("</" + node.type + ">")
            if not node.is_terminal:  # every rollout through a node goes on into exactly one child
                assert node.visits == sum(c.visits for c in node.children)
            if node.is_terminal:
                assert node.type == "answer" and node.correct is not None
                assert node.correct == get_task("toy").score(response_text(node), tree.problem.answer)[1]
                segments = parse_response(response_text(node))
                assert segments[-1].type == "answer" and segments[-1].closed
        check_ids(searcher, tree)
        correct = [response_text(n) for n in tree.nodes if n.is_terminal and n.correct and n.visits]
        assert tree.correct_count == len(correct) == len(set(correct))  # distinct texts, one node each


def test_identical_sibling_samples_are_one_node_with_their_count(toy_model, toy_tokenizer):
    """Greedy sampling makes every sample of an expansion the same text: each becomes one node, samples=n."""
    searcher = make_searcher(toy_model, toy_tokenizer, temperature=0.0)
    trees = search(searcher, n=2)
    for tree in trees:
        for node in tree.nodes:
            texts = [c.text for c in node.children]
            assert len(texts) == len(set(texts))
            for child in node.children:  # all samples of one request merged into its first
                asked = dict(searcher.policy.types[node.type].children).get(child.type, 1)
                assert child.samples == (asked if child.generated else 1)
        assert tree.duplicates == sum(n.samples - 1 for n in tree.nodes) > 0
        assert tree.sampled == sum(n.samples for n in tree.nodes if n.generated)
        answers = [response_text(n) for n in tree.nodes if n.is_terminal]
        assert len(answers) == len(set(answers))
        record = to_record(tree, "toy", "fp")
        assert [n["id"] for n in record["nodes"]] == list(range(len(tree.nodes)))  # no gaps after merging
        assert [n["samples"] for n in record["nodes"]] == [n.samples for n in tree.nodes]
        assert record["duplicate_samples"] == tree.duplicates and record["sampled_nodes"] == tree.sampled


def test_reflection_is_grafted_on_the_nearest_double_check_above_a_wrong_answer(tagged_trees):
    grafted = 0
    for tree in tagged_trees:
        wrong_anchors = {reflection_anchor(n, "double_check").id for n in tree.nodes
                         if n.is_terminal and n.visits and not n.correct}
        reflections = [n for n in tree.nodes if n.type == "reflection"]
        for r in reflections:
            assert r.parent.type == "double_check" and r.parent.id in wrong_anchors
            assert r.text == REFLECTION and r.generated == 0 and r.confidence is None  # prefill, no generation
            assert [c.type for c in r.children] in ([], ["thinking_from_scratch"] * 2)
        assert {r.parent.id for r in reflections} == wrong_anchors  # every wrong answer's anchor got one, once
        assert len(reflections) == len(wrong_anchors) == tree.reflections
        grafted += len(reflections)
    assert grafted > 0


def records(trees):
    return [to_record(t, "toy", "fp") for t in trees]


def test_overlapping_siblings_give_the_same_trees_as_waiting_for_them(toy_model, toy_tokenizer, tagged_trees):
    waiting = make_searcher(toy_model, toy_tokenizer)
    waiting.wait_for_siblings = True
    for lazy, eager in zip(records(tagged_trees), records(search(waiting))):
        conf = [(a.pop("confidence"), b.pop("confidence")) for a, b in zip(lazy["nodes"], eager["nodes"])]
        assert lazy == eager
        assert all(a == b or abs(a - b) < 1e-5 for a, b in conf)  # batch composition: float rounding only


def test_step_granularity_cuts_at_newlines_and_never_splits_the_answer(toy_model, toy_tokenizer):
    searcher = make_searcher(toy_model, toy_tokenizer, granularity="step", max_iterations=4)
    trees = search(searcher, n=2)
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.type == "reflection":
                assert node.text == REFLECTION.lstrip("\n") + "\n"  # a step of its own, ended by the newline
                continue
            if node.finish_reason == "stop" and "<answer>" not in node.text:
                assert node.text.endswith("\n") and node.text.count("\n") == 1
            if "<answer>" in node.text:
                assert node.is_terminal and ("</answer>" in node.text or node.finish_reason == "eos")
        assert {n.type for n in tree.nodes} >= {"root", "sub_task", "thinking", "answer"}
        check_ids(searcher, tree)
    assert any(n.type == "reflection" for tree in trees for n in tree.nodes)


def test_mini_step_granularity_cuts_every_32_tokens_but_not_the_answer(toy_model, toy_tokenizer):
    trees = search(make_searcher(toy_model, toy_tokenizer, granularity="mini_step", mini_step_tokens=32,
                                 max_iterations=4), n=2)
    cut = 0
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.type == "reflection":
                continue
            before = response_text(node.parent)
            assert not Policy.answer_open(before)  # no node starts inside an answer
            if "<answer>" in node.text:
                assert node.is_terminal and ("</answer>" in node.text or node.finish_reason == "eos")
                assert node.generated >= 1
            elif not node.is_terminal:
                assert node.generated == 32
                cut += 1
    assert cut > 0


def test_two_models_route_node_types_and_keep_text_canonical(toy_model, toy_tokenizer, tmp_path):
    from marco_train.models import load_tokenizer

    other = tmp_path / "special"
    shutil.copytree(TOY_CHECKPOINT, other)
    special_tok = load_tokenizer(other)
    special = HFEngine(tiny_qwen2(special_tok, seed=1), special_tok, name="special")
    searcher = make_searcher(toy_model, toy_tokenizer, special, max_node_tokens=12, max_iterations=3,
                             **{"node_types": {"double_check": {"special": True}}})
    (tree,) = search(searcher, n=1, in_flight=1)
    main_key, special_key = "toy/checkpoint", f"{tmp_path.name}/special"
    checks = [n for n in tree.nodes if n.type == "double_check"]
    assert checks and special.tokens_generated > 0
    for node in tree.nodes[1:]:
        made_by = special_key if node.type == "double_check" else main_key
        assert made_by in node.token_ids
        if node.type == "double_check" and node.children:  # continued by the main model: its text, tokenised once
            assert set(node.token_ids) == {main_key, special_key}
    check_ids(searcher, tree)
