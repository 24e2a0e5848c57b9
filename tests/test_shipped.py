"""Shipped files (marco_train/shipped.py): a relative path in a config is read from the working directory when it is
there, else from the files that ship with the package (in this checkout: the repository's top level)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, TOY_CHECKPOINT
from marco_train import shipped
from marco_train.config import ConfigError
from marco_train.pipeline import build_plan


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty working directory outside the repository."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_a_checkout_reads_the_top_level_directories(elsewhere):
    assert shipped.root("configs") == REPO / "configs" and shipped.root("mcts_data") == REPO / "mcts_data"
    assert shipped.locate("configs/demo.yaml") == str(REPO / "configs" / "demo.yaml")
    assert shipped.locate("mcts_data/problems/toy_train.jsonl") == str(REPO / "mcts_data/problems/toy_train.jsonl")
    assert shipped.locate("marco_train/toy/checkpoint") == str(TOY_CHECKPOINT)


def test_paths_that_are_not_shipped_stay_as_written(elsewhere):
    for value in ("Qwen/Qwen2.5-7B-Instruct", "configs/nope.yaml", "mcts_data/../configs/demo.yaml",
                  "other/demo.yaml", "/nowhere/configs/demo.yaml", "", "HuggingFaceH4/MATH-500"):
        assert shipped.locate(value) == value


def test_a_file_in_the_working_directory_wins(elsewhere):
    own = elsewhere / "mcts_data" / "problems" / "toy_train.jsonl"
    own.parent.mkdir(parents=True)
    own.write_text('{"id": "mine-1", "question": "Compute 1 + 2.", "answer": "3"}\n')
    assert shipped.locate("mcts_data/problems/toy_train.jsonl") == "mcts_data/problems/toy_train.jsonl"
    assert shipped.locate("mcts_data/problems/toy_heldout.jsonl") == str(REPO / "mcts_data/problems/toy_heldout.jsonl")


def test_config_short_names(elsewhere):
    assert shipped.config_file("demo") == str(REPO / "configs" / "demo.yaml")
    assert shipped.config_file("ablations/paper") == str(REPO / "configs" / "ablations" / "paper.yaml")
    assert shipped.config_file("configs/smollm2.yaml") == str(REPO / "configs" / "smollm2.yaml")
    assert shipped.config_file("nope") == "nope"
    (elsewhere / "demo").write_text("experiment: mine\n")
    assert shipped.config_file("demo") == "demo"


def test_the_listing_names_every_shipped_config_and_problem_file():
    listed = dict(shipped.listing())
    on_disk = sorted(f"configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*")
                     if p.is_file()) + sorted(f"mcts_data/problems/{p.name}"
                                              for p in (REPO / "mcts_data/problems").glob("*.jsonl"))
    assert sorted(listed) == sorted(on_disk)
    first = (REPO / "configs/demo.yaml").read_text().splitlines()[0].lstrip("# ")
    assert listed["configs/demo.yaml"] == first  # one sentence: the file's first comment line
    preset = "Qwen/Qwen2.5-7B-Instruct (the instruct checkpoint the paper fine-tunes)."
    assert listed["configs/models/qwen2.5-7b.yaml"] == preset
    zero3 = "a DeepSpeed config: training.deepspeed=configs/deepspeed/zero3.json"
    assert listed["configs/deepspeed/zero3.json"] == zero3


def test_the_demo_plans_from_an_empty_directory_with_the_shipped_files(elsewhere):
    plan = build_plan("configs/demo.yaml", [f"runs_dir={elsewhere / 'runs'}"])
    assert plan.stages["bootstrap"].cfg.checkpoint == str(TOY_CHECKPOINT)
    assert plan.stages["mcts"].cfg.problems_file == str(REPO / "mcts_data/problems/toy_train.jsonl")
    assert plan.stages["eval_dpo"].cfg.problems_file == str(REPO / "mcts_data/problems/toy_heldout.jsonl")
    assert not (elsewhere / "runs").exists()


def test_a_users_own_problem_file_is_fingerprinted_instead_of_the_shipped_one(elsewhere):
    shipped_plan = build_plan("configs/demo.yaml")
    own = elsewhere / "mcts_data" / "problems" / "toy_train.jsonl"
    own.parent.mkdir(parents=True)
    own.write_text("".join(json.dumps({"id": f"mine-{i}", "question": f"Compute {i} + 2.", "answer": str(i + 2)})
                           + "\n" for i in range(3)))
    plan = build_plan("configs/demo.yaml")
    assert plan.stages["mcts"].cfg.problems_file == "mcts_data/problems/toy_train.jsonl"  # relative: the user's
    assert plan.stages["mcts"].fingerprint != shipped_plan.stages["mcts"].fingerprint
    assert plan.stages["bootstrap"].cfg.train_problems == "mcts_data/problems/toy_train.jsonl"
    assert plan.stages["eval_base"].cfg.problems_file == str(REPO / "mcts_data/problems/toy_heldout.jsonl")


def test_includes_and_deepspeed_files_come_from_the_shipped_configs(elsewhere):
    (elsewhere / "mine.yaml").write_text("""experiment: mine
stages:
  split:
    kind: split
    trees_dir: mcts_data/examples
    model: {name_or_path: marco_train/toy/checkpoint}
  sft:
    kind: sft
    inputs: {data: split}
    include: configs/models/qwen2.5-7b.yaml
""")
    cfg = build_plan("mine.yaml").stages["sft"].cfg
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-7B-Instruct"  # from the shipped preset
    assert cfg.training.deepspeed == str(REPO / "configs" / "deepspeed" / "zero3.json")
    with pytest.raises(ConfigError, match=r"^command-line override 'stages.sft.training.deepspeed=none.json': "
                                          r"stages.sft.training.deepspeed: file 'none.json' not found \(see configs/"):
        build_plan("mine.yaml", ["stages.sft.training.deepspeed=none.json"])


def test_deepspeed_not_installed_is_named_at_plan_time(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"stages.sft.training.deepspeed: DeepSpeed is not installed: pip install "
                                          r"'marco-train\[deepspeed\]' \(or unset training.deepspeed\)"):
        build_plan("configs/demo.yaml", ["stages.sft.training.deepspeed=configs/deepspeed/zero2.json"])


def test_the_bootstrap_stage_names_a_missing_checkpoint(elsewhere):
    from marco_train.pipeline import execute_stage

    plan = build_plan("configs/demo.yaml", [f"runs_dir={elsewhere / 'runs'}", "stages.bootstrap.checkpoint=./gone",
                                            "wandb.mode=disabled"])
    with pytest.raises(FileNotFoundError, match=r"^stages.bootstrap.checkpoint: no model at './gone' \(neither "
                                                r"here nor among the package's shipped files\); point it at a saved "
                                                r"toy model or set stages.bootstrap.retrain=true$"):
        execute_stage(plan, plan.stages["bootstrap"])


def test_a_nested_path_key_of_a_stage_with_string_annotations_is_fingerprinted(tmp_path):
    """sft.py has `from __future__ import annotations`: its nested sections' path keys (dataset.name_or_path) were
    missed before, so a changed dataset file did not re-run the sft stage; its training.deepspeed is located too."""
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Compute 3 + 4.", "completion": "The answer is: 7"}) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"experiment: u\nwandb: {{mode: disabled}}\nstages:\n  sft:\n    kind: sft\n"
                      f"    model: {{name_or_path: {TOY_CHECKPOINT}}}\n    dataset: {{name_or_path: {data}}}\n")
    before = build_plan(str(config)).stages["sft"]
    assert set(before.fingerprint_inputs["files"]) == {"dataset.name_or_path", "model.name_or_path"}
    data.write_text(data.read_text().replace("7", "8"))
    assert build_plan(str(config)).stages["sft"].fingerprint != before.fingerprint
