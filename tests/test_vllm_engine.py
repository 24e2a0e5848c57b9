"""The vllm engine (marco_train/engines/vllm_engine.py), for real on CPU through the `vllm-cpu` package.

vllm-cpu pins transformers below the main venv's, so these tests run in the second venv, .venv-vllm (`make test`
builds it and runs them there); in .venv they skip. Checked against the HF model (transformers) and the hf engine:
confidences from vLLM's log-probs vs the HF model's on the same tokens, text / stop / eos semantics, per-request
seeds, the search on both engines, a second model as the special engine, and the mcts stage of the demo with
engine=vllm on 2 ranks (prefix-cache hits in its summary, the same trees as this process's search), and the eval
stage on vLLM (the hf engine's greedy samples and scores).
"""

import json
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine (tiny models)
pytest.importorskip("vllm", reason="vllm is not installed in this venv; tests/test_vllm*.py run in .venv-vllm "
                                   "(`make test` builds it: vllm-cpu pins an older transformers)")

from conftest import TOY_CHECKPOINT, pipeline, tiny_qwen2  # noqa: E402

# |vLLM - HF| allowed on a confidence and on a raw log-prob: both run the model in float32 on CPU with different
# kernels (measured here: at most 1.6e-7 on the toy model, 9.5e-7 on the random one; -s prints it).
TOLERANCE = 1e-5
DEMO_CUT = ["stages.mcts.num_problems=2", "stages.mcts.max_iterations=8"]


@pytest.fixture(scope="module")
def vllm_toy(toy_tokenizer):
    from marco_train.engines import build_engine

    return build_engine("vllm", TOY_CHECKPOINT, toy_tokenizer, label="policy")


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory, toy_tokenizer):
    """A random tiny Qwen2 (head size 32, vLLM's CPU minimum): flat next-token distributions, so samples often
    fall outside the top 5."""
    path = tmp_path_factory.mktemp("random_qwen2")
    tiny_qwen2(toy_tokenizer, seed=1, hidden_size=64, layers=2, heads=2).save_pretrained(path)
    toy_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vllm_random(random_dir, toy_tokenizer, vllm_toy):  # after vllm_toy: two engines live in one process
    from marco_train.engines import build_engine

    return build_engine("vllm", random_dir, toy_tokenizer, label="special")


def prompts(tokenizer, n=3, start=""):
    from marco_train.prompts import prompt_ids
    from marco_train.tasks import get_task, load_problems_file

    problems = load_problems_file("mcts_data/problems/toy_heldout.jsonl")[:n]
    extra = tokenizer(start, add_special_tokens=False)["input_ids"] if start else []
    return [prompt_ids(tokenizer, get_task("toy"), p.question) + extra for p in problems]


def hf_confidences(model, prompt, ids):
    """What HFEngine computes (confidence.step_confidence on the raw logits) for `ids` following `prompt`."""
    import torch

    from marco_train.engines.confidence import step_confidence

    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:len(prompt) + len(ids) - 1]
    conf, lp, top_lp, top_ids = step_confidence(logits, torch.tensor(ids))
    return conf.tolist(), lp.tolist(), top_lp.tolist(), top_ids.tolist()


@pytest.mark.parametrize("which", ["toy", "random"])
def test_confidences_equal_the_hf_models(which, request, toy_tokenizer, toy_model, random_dir):
    from marco_train.engines.base import SamplingParams
    from marco_train.models import load_model

    engine = request.getfixturevalue(f"vllm_{which}")
    model = toy_model if which == "toy" else load_model(random_dir)
    batch = prompts(toy_tokenizer)
    outs = engine.generate(batch, SamplingParams(n=2, max_tokens=24, temperature=1.0, seed=7))
    worst, outside = 0.0, []
    for prompt, comps in zip(batch, outs):
        for c in comps:
            assert len(c.token_ids) == len(c.logprobs) == len(c.confidences) == len(c.top_logprobs) > 0
            conf, lp, top_lp, top_ids = hf_confidences(model, prompt, c.token_ids)
            for i, token in enumerate(c.token_ids):
                worst = max(worst, abs(c.confidences[i] - conf[i]), abs(c.logprobs[i] - lp[i]))
                assert [x for _, x in c.top_logprobs[i]] == pytest.approx(top_lp[i], abs=TOLERANCE)
                gaps = [a - b for a, b in zip(top_lp[i], top_lp[i][1:])]
                if min(gaps) > TOLERANCE:  # no near-tie: the same five tokens in the same order
                    assert [t for t, _ in c.top_logprobs[i]] == top_ids[i]
                if token not in top_ids[i]:
                    outside.append(c.confidences[i])
    print(f"{which}: max |vLLM - HF| over confidences and log-probs = {worst:.2e}")
    assert worst <= TOLERANCE
    if which == "random":  # sampled token outside the top 5: p(t) / top-5 mass, below 1/5 (confidence.py)
        assert len(outside) >= 5 and max(outside) < 0.2
    else:
        assert not outside and min(x for comps in outs for c in comps for x in c.confidences) > 0.2


@pytest.mark.slow
def test_text_stop_eos_and_length_as_the_hf_engine(vllm_toy, toy_tokenizer, toy_model):
    from marco_train.engines.base import SamplingParams
    from marco_train.engines.hf_engine import HFEngine

    hf = HFEngine(toy_model, toy_tokenizer)
    eos = toy_tokenizer.eos_token_id
    cases = [  # (prompts, params, expected finish reason): greedy, so both engines must agree token for token
        (prompts(toy_tokenizer, 2, "<sub_task>"), SamplingParams(max_tokens=48, temperature=0.0,
                                                                  stop=("</sub_task>",)), "stop"),
        (prompts(toy_tokenizer, 2), SamplingParams(max_tokens=200, temperature=0.0), "eos"),
        (prompts(toy_tokenizer, 2), SamplingParams(max_tokens=3, temperature=0.0), "length"),
        (prompts(toy_tokenizer, 2), SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True, logprobs=0),
         "length"),  # on past the end of turn (the benchmark's fixed lengths), no top log-probs returned
    ]
    for batch, params, reason in cases:
        for (v,), (h,) in zip(vllm_toy.generate(batch, params), hf.generate(batch, params)):
            assert (v.text, v.token_ids, v.finish_reason) == (h.text, h.token_ids, h.finish_reason)
            assert v.finish_reason == reason and len(v.top_logprobs) == (0 if params.ignore_eos else len(v.token_ids))
            assert (eos in v.token_ids) == ("<|im_end|>" in v.text) == params.ignore_eos
            if reason == "stop":
                assert v.text.endswith("</sub_task>") and v.text.count("</sub_task>") == 1
            if reason == "length":
                assert len(v.token_ids) == params.max_tokens
            assert v.confidences == pytest.approx(h.confidences, abs=TOLERANCE)


def test_seeds_fix_the_samples_whatever_the_batch(vllm_random, toy_tokenizer):
    from marco_train.engines.base import SamplingParams

    batch = prompts(toy_tokenizer, 3)
    params = SamplingParams(n=3, max_tokens=16, temperature=1.0, seed=11)
    alone = [c.token_ids for c in vllm_random.generate(batch[:1], params)[0]]
    crowd = vllm_random.generate(batch, [SamplingParams(n=2, max_tokens=30, seed=3), params, params])
    assert [c.token_ids for c in crowd[2]] == alone  # same prompt, same seed, other batch and batch position
    assert len(set(map(tuple, alone))) == 3  # the n samples differ (sample j is seeded by seed + j)
    other = vllm_random.generate(batch[:1], SamplingParams(n=3, max_tokens=16, temperature=1.0, seed=12))[0]
    assert [c.token_ids for c in other] != alone  # the seed matters (flat random model, 16 tokens)
    # More prompt tokens than one step takes (2048): vLLM's chunked prefill would split a seeded prompt, which
    # vllm-cpu 0.32 cannot do ("CPU Generator does not use offset"); the engine turns it off on CPU.
    many = prompts(toy_tokenizer, 80)
    assert sum(map(len, many)) > 2048
    out = vllm_random.generate(many, [params] + [SamplingParams(max_tokens=2, seed=i) for i in range(79)])
    assert [c.token_ids for c in out[0]] == alone


def demo_search_config(*overrides):
    from marco_train.pipeline import build_plan

    plan = build_plan("configs/demo.yaml", [*DEMO_CUT, *overrides])
    return plan.stages["mcts"].cfg, plan.root.seed


def search(cfg, seed, engine, special=None, in_flight=1):
    from marco_train.mcts.policy import Policy
    from marco_train.mcts.search import Searcher, SearchSettings
    from marco_train.mcts.tree import to_record
    from marco_train.tasks import get_task

    task = get_task(cfg.task)
    problems = sorted(task.load_problems(cfg.problems_file, cfg.split, cfg.num_problems), key=lambda p: p.id)
    trees = []
    Searcher(Policy(cfg), SearchSettings.from_config(cfg, seed), task, engine, special).run(
        problems, lambda tree, live: trees.append(to_record(tree, cfg.task, "", True)), in_flight)
    return sorted(trees, key=lambda t: t["problem_id"])


def check_tree(tree, tokenizer):
    """The tree schema of mcts_data/README.md, and node text == its token ids decoded."""
    from marco_train.prompts import close_tag, open_tag

    nodes = tree["nodes"]
    assert [n["id"] for n in nodes] == list(range(len(nodes))) and len(nodes) > 1
    assert nodes[0]["parent"] is None and nodes[0]["text"] == "" and nodes[0]["type"] == "root"
    assert nodes[0]["visits"] == tree["iterations"] > 0
    for n in nodes[1:]:
        assert n["parent"] < n["id"]
        sep = "" if n["parent"] == 0 else "\n"
        assert n["text"].startswith(sep + open_tag(n["type"])), n
        assert n["text"].endswith(close_tag(n["type"])) or n["is_terminal"], n  # eos may end a segment
        (ids,) = n["token_ids"].values()
        assert tokenizer.decode(ids) == n["text"]
        if n["generated_tokens"]:
            assert 0 < n["confidence"] <= 1
        if n["is_terminal"]:
            assert isinstance(n["correct"], bool)
    # correct_terminals counts the distinct correct response texts a rollout reached (mcts_data/README.md)
    reached = {response_text(nodes, n) for n in nodes if n["is_terminal"] and n["correct"] and n["visits"] > 0}
    assert tree["correct_terminals"] == len(reached)


def response_text(nodes, node) -> str:
    parts = []
    while node["parent"] is not None:
        parts.append(node["text"])
        node = nodes[node["parent"]]
    return "".join(reversed(parts))


@pytest.fixture(scope="module")
def vllm_demo_trees(vllm_toy):
    cfg, seed = demo_search_config("stages.mcts.engine=vllm")
    return search(cfg, seed, vllm_toy, in_flight=2)


@pytest.mark.slow
def test_same_search_on_both_engines_gives_valid_trees(vllm_demo_trees, toy_tokenizer, toy_model):
    from marco_train.engines.hf_engine import HFEngine

    cfg, seed = demo_search_config()
    hf_trees = search(cfg, seed, HFEngine(toy_model, toy_tokenizer), in_flight=2)
    assert [t["problem_id"] for t in hf_trees] == [t["problem_id"] for t in vllm_demo_trees] and len(hf_trees) == 2
    for tree in hf_trees + vllm_demo_trees:
        check_tree(tree, toy_tokenizer)


@pytest.mark.slow
def test_special_model_as_a_second_vllm_engine(vllm_toy, vllm_random, toy_tokenizer):
    cfg, seed = demo_search_config("stages.mcts.num_problems=1", "stages.mcts.max_iterations=4",
                                   "stages.mcts.node_types.double_check.special=true",
                                   "stages.mcts.node_types.double_check.max_tokens=8")
    before = vllm_random.tokens_generated
    (tree,) = search(cfg, seed, vllm_toy, vllm_random, in_flight=1)
    check_tree(tree, toy_tokenizer)
    checks = [n for n in tree["nodes"] if n["type"] == "double_check"]
    assert checks and vllm_random.tokens_generated - before >= sum(n["generated_tokens"] for n in checks) > 0


@pytest.mark.slow
def test_demo_mcts_stage_on_vllm_under_torchrun(tmp_path, vllm_demo_trees):
    """Two ranks (as two nodes would run it: one process each, problems sharded by rank), each with its own
    vLLM engine in its own processes (world size 1 each, not the torchrun job's)."""
    from marco_train.pipeline import build_plan

    overrides = [f"runs_dir={tmp_path}", "stages.mcts.engine=vllm", "stages.mcts.nproc_per_node=2", *DEMO_CUT]
    run = pipeline("configs/demo.yaml", *overrides, flags=["--until", "mcts"],
                   env={"WANDB_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert (run.stdout + run.stderr).count("rank 0 in world size 1 is assigned") == 2  # vLLM log, once per rank
    out = build_plan("configs/demo.yaml", overrides).stages["mcts"].out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((out / "_DONE.json").read_text())["summary"]
    print(f"demo search on vLLM: prefix-cache hit rate {summary['prefix_cache_hit_rate']:.1%} "
          f"({summary['prefix_cache_hit_tokens']} of {summary['prefix_cache_query_tokens']} prompt tokens)")
    assert 0 < summary["prefix_cache_hit_tokens"] <= summary["prefix_cache_query_tokens"]
    assert summary["prefix_cache_hit_rate"] == round(summary["prefix_cache_hit_tokens"] /
                                                     summary["prefix_cache_query_tokens"], 4)
    # Same seed, other processes (other engines, cache histories, world size): the same trees as this process's.
    shards = sorted((out / "trees").glob("rank-*.jsonl"))
    assert [p.name for p in shards] == ["rank-00000.jsonl", "rank-00001.jsonl"]
    stage_trees = sorted((json.loads(x) for p in shards for x in p.read_text().splitlines()),
                         key=lambda t: t["problem_id"])
    for tree in stage_trees + vllm_demo_trees:
        for n in tree["nodes"]:
            n["token_ids"] = list(n["token_ids"].values())  # keyed by the tokenizer's path, which differs
        tree["fingerprint"] = ""
    # the same texts and tree shapes; a confidence may move in the 6th decimal (vLLM's batches differ per process)
    confidences = [[[n.pop("confidence") for n in t["nodes"]] for t in trees]
                   for trees in (stage_trees, vllm_demo_trees)]
    assert stage_trees == vllm_demo_trees
    for got, want in zip(*confidences):
        assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.slow
def test_eval_stage_on_vllm_scores_the_hf_engine_samples(tmp_path):
    """The eval stage with engine=vllm (in-process) against engine=hf: greedy, so the same responses and scores."""
    from marco_train.pipeline import build_plan

    env = {"WANDB_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": "1"}
    outs = {}
    for engine in ("hf", "vllm"):
        overrides = [f"runs_dir={tmp_path}", "stages.eval_base.num_problems=16", f"stages.eval_base.engine={engine}",
                     "stages.eval_base.nproc_per_node=1"]  # in-process (the demo evaluates on 2 ranks)
        pipeline("configs/demo.yaml", *overrides, flags=["--until", "eval_base"], env=env)
        outs[engine] = build_plan("configs/demo.yaml", overrides).stages["eval_base"].out_dir
    hf, vllm = ([json.loads(x) for x in (outs[e] / "samples.jsonl").read_text().splitlines()] for e in outs)
    assert outs["hf"] != outs["vllm"] and len(hf) == 16 and vllm == hf  # the engine is part of the fingerprint
    metrics = [json.loads((out / "metrics.json").read_text()) for out in outs.values()]
    assert metrics[0] == metrics[1] and metrics[0]["accuracy"] > 0
