"""The mcts stage end to end (pipeline subprocesses on the demo config, shrunk): outputs and the tree schema,
same seed -> identical trees, kill mid-shard + rerun, malformed problem files, two ranks under torchrun."""

import json
import re

import pytest

from conftest import PYTHON, pipeline, run, torchrun
from marco_train.config import ConfigError
from marco_train.data.trees import read_trees
from marco_train.pipeline import DONE_FILE, build_plan
from marco_train.tasks import load_problems_file

CONFIG = "configs/demo.yaml"
SMALL = ["stages.mcts.num_problems=5", "stages.mcts.max_iterations=4", "stages.mcts.stop_correct=2",
         "stages.mcts.min_iterations=2", "stages.mcts.min_correct=1",
         "stages.mcts.nproc_per_node=1"]  # the demo searches on 2 ranks; these tests read one shard (a runtime key)
ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}  # small batches: one thread per process is fastest
NODE_FIELDS = {"id", "parent", "type", "text", "visits", "value", "confidence", "is_terminal", "answer", "correct",
               "generated_tokens", "samples", "token_ids"}


def stage_dir(runs, *extra):
    return build_plan(CONFIG, [f"runs_dir={runs}", *SMALL, *extra]).stages["mcts"].out_dir


def shard_lines(out):
    return {p.name: p.read_text().splitlines() for p in sorted((out / "trees").glob("rank-*.jsonl"))}


def trees_by_id(out):
    trees = [json.loads(line) for lines in shard_lines(out).values() for line in lines]
    return sorted(trees, key=lambda t: t["problem_id"])


def run_mcts(runs, *extra, env=ENV, check=True):
    return pipeline(CONFIG, f"runs_dir={runs}", *SMALL, *extra, flags=["--until", "mcts"], env=env, check=check)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("mcts_a")
    run_mcts(runs)
    return stage_dir(runs)


@pytest.mark.slow
def test_stage_outputs_schema_summary_and_tracking(first_run):
    out = first_run
    trees = trees_by_id(out)
    problems = load_problems_file("mcts_data/problems/toy_train.jsonl")[:5]
    assert [t["problem_id"] for t in trees] == [p.id for p in problems]
    fingerprint = out.name.rsplit("-", 1)[1]
    for tree, problem in zip(trees, problems):
        assert (tree["question"], tree["answer"], tree["task"], tree["fingerprint"]) == \
            (problem.question, problem.answer, "toy", fingerprint)
        root = tree["nodes"][0]
        assert (root["id"], root["parent"], root["type"], root["text"]) == (0, None, "root", "")
        assert root["visits"] == tree["iterations"] and tree["stop_reason"]
        for node in tree["nodes"]:
            assert set(node) == NODE_FIELDS
            assert node["is_terminal"] == (node["correct"] is not None)
    assert len(list(read_trees(out / "trees" / "rank-00000.jsonl"))) == 5  # the split stage's reader takes them
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trees"] == 5 and summary["nodes"] == sum(len(t["nodes"]) for t in trees)
    assert summary["reflections"] == sum(t["reflections"] for t in trees)
    assert summary["correct_terminals"] == sum(n["is_terminal"] and n["correct"] for t in trees for n in t["nodes"])
    assert summary["tokens_generated"] == summary["tokens_generated_this_run"] > 0
    assert summary["tokens_per_second"] > 0
    for tree in trees:  # merged sibling samples: counted on the node that has their text, and on the tree
        assert tree["duplicate_samples"] == sum(n["samples"] - 1 for n in tree["nodes"])
        texts = {}
        for n in tree["nodes"]:
            texts.setdefault((n["parent"], n["text"]), []).append(n["id"])
        assert all(len(ids) == 1 for ids in texts.values())  # no two siblings share a text
    diag = summary["diagnostics"]
    sampled, duplicates = sum(t["sampled_nodes"] for t in trees), sum(t["duplicate_samples"] for t in trees)
    assert diag["duplicate_sibling_rate"] == round(duplicates / sampled, 4)
    correct = [n for t in trees for n in t["nodes"] if n["is_terminal"] and n["correct"]]
    assert diag["process"]["correct_paths"] == len(correct)
    assert diag["reflection"]["below_reflection"]["answers"] + diag["reflection"]["elsewhere"]["answers"] == \
        sum(n["is_terminal"] for t in trees for n in t["nodes"])
    assert (out / "confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / DONE_FILE).read_text())["summary"] == summary
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["mcts/trees"] == 5 and logged[-1]["mcts/nodes"] == summary["nodes"]
    assert list((out / "wandb").glob("offline-run-*"))
    shown = run([PYTHON, "launchers/show_tree.py", str(out), "--id", trees[1]["problem_id"]]).stdout.splitlines()
    assert shown[0].startswith(f"{trees[1]['problem_id']}: {trees[1]['question']}")
    assert shown[1].startswith("[0] root") and re.match(r"  \[1\]( x\d+)? sub_task", shown[2])
    assert len(shown) == len(trees[1]["nodes"]) + 1


@pytest.mark.slow
def test_same_seed_same_trees(first_run, tmp_path):
    run_mcts(tmp_path / "b")
    assert trees_by_id(stage_dir(tmp_path / "b")) == trees_by_id(first_run)


@pytest.mark.slow
def test_killed_mid_shard_then_rerun_loses_and_duplicates_nothing(first_run, tmp_path):
    runs = tmp_path / "killed"
    killed = run_mcts(runs, env={**ENV, "MARCO_FAULT": "mcts:mid_shard:2"}, check=False)
    assert killed.returncode != 0 and "MARCO_FAULT" in killed.stdout
    out = stage_dir(runs)
    before = shard_lines(out)["rank-00000.jsonl"]
    assert len(before) == 2 and not (out / DONE_FILE).exists()
    with open(out / "trees" / "rank-00000.jsonl", "a") as f:
        f.write('{"problem_id": "toy-t0000')  # what a kill during the next append leaves behind
    rerun = run_mcts(runs)
    assert "cut a torn last line" in rerun.stdout
    after = shard_lines(out)["rank-00000.jsonl"]
    assert after[:2] == before  # trees finished before the kill are unchanged
    ids = [json.loads(line)["problem_id"] for line in after]  # every line is valid JSON
    assert sorted(ids) == sorted(set(ids)) == [t["problem_id"] for t in trees_by_id(first_run)]
    assert json.loads((out / "summary.json").read_text())["trees"] == 5


def test_malformed_problem_files_fail_with_file_line_and_field_at_plan_time(tmp_path):
    good = '{"id": "a", "question": "Compute 1 + 2.", "answer": "3"}\n'
    cases = {"bad_json.jsonl": (good + '{"id": "b", "question": \n', ":2: not valid JSON"),
             "no_answer.jsonl": (good + '{"id": "b", "question": "Compute 2 + 2.", "answer": "4"}\n'
                                 '{"id": "c", "question": "Compute 1 + 1."}\n', ":3: missing field 'answer'"),
             "empty.jsonl": ("", ": no problems in file")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            build_plan(CONFIG, [f"runs_dir={tmp_path / 'runs'}", *SMALL, f"stages.mcts.problems_file={path}"])
        assert f"stages.mcts.problems_file: {path}{message}" in str(error.value)
        assert not (tmp_path / "runs").exists()  # nothing started


def test_bad_search_config_is_a_plan_time_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^command-line override 'stages.mcts.node_types.thinking.children.tinking=2'"
                                          r": stages.mcts.node_types.thinking.children.tinking names no configured"):
        build_plan(CONFIG, ["stages.mcts.node_types.thinking.children.tinking=2"])
    with pytest.raises(ConfigError, match=r"stages.mcts.reward 'outcome' is not one of verified, confidence, mixed"):
        build_plan(CONFIG, ["stages.mcts.reward=outcome"])
    with pytest.raises(ConfigError, match=r"^configs/demo.yaml:\d+: stages.mcts.max_batch_rows must hold the largest"):
        build_plan(CONFIG, ["stages.mcts.step_samples=300"])


@pytest.mark.slow
def test_torchrun_two_ranks_write_two_shards_whose_union_is_the_problem_set_and_rerun_identically(tmp_path):
    runs = tmp_path / "runs"
    six = ["stages.mcts.num_problems=6"]
    pipeline(CONFIG, f"runs_dir={runs}", *SMALL, *six, flags=["--until", "bootstrap"], env=ENV)
    torchrun("launchers/mcts.py", "--config", CONFIG, f"runs_dir={runs}", *SMALL, *six, env=ENV)
    out = stage_dir(runs, *six)
    shards = {name: [json.loads(line)["problem_id"] for line in lines] for name, lines in shard_lines(out).items()}
    assert set(shards) == {"rank-00000.jsonl", "rank-00001.jsonl"}
    problems = sorted(p.id for p in load_problems_file("mcts_data/problems/toy_train.jsonl")[:6])
    assert sorted(shards["rank-00000.jsonl"]) == problems[0::2]  # sharded by sorted id, round robin
    assert sorted(shards["rank-00001.jsonl"]) == problems[1::2]
    done = json.loads((out / DONE_FILE).read_text())
    assert done["world_size"] == 2 and done["summary"]["trees"] == 6
    first = trees_by_id(out)
    torchrun("launchers/mcts.py", "--config", CONFIG, "--force", f"runs_dir={runs}", *SMALL, *six, env=ENV)
    assert trees_by_id(out) == first  # same seed, world size and batch settings: identical trees
