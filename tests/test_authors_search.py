"""The authors' search preset (configs/mcts/authors_v2.yaml) with our transition patterns, on the toy model and a
second tiny model: every double_check and thinking_from_scratch sample comes from the second model (counted per
engine in the records and the stage summary), each tree records the pattern it followed, and the same seed draws
the same patterns."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from conftest import TOY_CHECKPOINT, tiny_qwen2
from marco_train.engines.hf_engine import HFEngine
from marco_train.mcts.policy import Policy
from marco_train.mcts.search import Searcher, SearchSettings, token_key
from marco_train.mcts.tree import to_record
from marco_train.stages.mcts import Config, summarize
from marco_train.tasks import get_task, load_problems_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPECIAL = {"double_check", "thinking_from_scratch"}
FIRST_CHILD = {"decompose": "sub_task", "hypothesis": "sub_task", "reclarify": "reclarify", "direct": "thinking"}


def preset(**overrides):
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load("configs/mcts/authors_v2.yaml"),
                           OmegaConf.load("configs/mcts/patterns_ours.yaml"), overrides)


@pytest.fixture(scope="module")
def searched(toy_model, toy_tokenizer, tmp_path_factory):
    from marco_train.models import load_tokenizer

    other = tmp_path_factory.mktemp("models") / "special"
    shutil.copytree(TOY_CHECKPOINT, other)
    special_tok = load_tokenizer(other)
    special = HFEngine(tiny_qwen2(special_tok, seed=1), special_tok, name="special")
    cfg = preset(max_node_tokens=12, max_depth=8, max_iterations=6, min_iterations=3, stop_correct=3, min_correct=2)
    searcher = Searcher(Policy(cfg), SearchSettings.from_config(cfg, 3), get_task("toy"),
                        HFEngine(toy_model, toy_tokenizer, name="policy"), special)
    problems = load_problems_file("mcts_data/problems/toy_train.jsonl")[:6]
    trees = {}
    searcher.run(problems, lambda tree, live: trees.__setitem__(tree.problem.id, tree), 6)
    return searcher, [trees[p.id] for p in problems]


@pytest.mark.slow
def test_every_double_check_and_thinking_from_scratch_sample_comes_from_the_special_model(searched, tmp_path):
    searcher, trees = searched
    special_key = token_key(searcher.special_engine)
    made = {"policy": set(), "special": set()}
    for tree in trees:
        for engine, by_type in tree.samples_by_engine.items():
            made[engine] |= set(by_type)
        for node in tree.nodes[1:]:
            if node.type in SPECIAL and node.generated:
                assert special_key in node.token_ids, (tree.problem.id, node.id)
    assert made["special"] == SPECIAL  # both types occurred (wrong answers got reflections) and went there ...
    assert not made["policy"] & SPECIAL  # ... and nowhere else
    shard = tmp_path / "trees" / "rank-00000.jsonl"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps(to_record(t, "toy", "fp", token_ids=False)) + "\n" for t in trees))
    summary = summarize(shard.parent, len(trees))
    assert summary["requests_by_engine"] == {e: sum(t.requests_by_engine.get(e, 0) for t in trees)
                                             for e in ("policy", "special")}
    assert set(summary["samples_by_engine"]["special"]) == SPECIAL
    assert summary["requests_by_engine"]["special"] > 0 and summary["requests_by_engine"]["policy"] > 0
    assert sum(summary["patterns"].values()) == len(trees)


@pytest.mark.slow
def test_each_tree_records_its_pattern_and_follows_it(searched):
    searcher, trees = searched
    for tree in trees:
        record = to_record(tree, "toy", "fp", token_ids=False)
        assert record["pattern"] == tree.pattern == searcher.policy.draw_pattern(3, tree.problem.id)
        assert {c.type for c in tree.root.children} == {FIRST_CHILD[tree.pattern]}


def test_the_same_seed_draws_the_same_patterns_and_all_four_occur():
    ids = [f"toy-t{i:05d}" for i in range(40)]
    draw = lambda seed: [Policy(preset()).draw_pattern(seed, i) for i in ids]  # noqa: E731
    assert draw(0) == draw(0)
    assert set(draw(0)) == set(FIRST_CHILD)
    assert draw(0) != draw(1)
    plain = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load("configs/mcts/authors_v2.yaml"))
    assert Policy(plain).draw_pattern(0, ids[0]) == ""  # none configured: every tree follows node_types
