"""CI smoke of configs/smollm2.yaml: the real config, shrunk by command-line overrides, on the real SmolLM2.

Two steps of the cot stage on two traces (one dev problem), one problem through mcts and split, two steps each of
sft and dpo, one problem per eval; the table is printed, and a rerun is all cached. So that the downstream stages
always get data, the answer node's prefill is forced to two complete answers, one right and one wrong ("The
answer is: 16" / "... 17" for word-t-00200, the first problem of the search's slice; closing tag included, so no
generation) and the split's process check is off (8-token segments hold no complete work): the tree then holds
both correct and wrong paths whatever the model writes. Stages
run in-process with one intra-op thread (OMP_NUM_THREADS=1: two threads on two shared cores are several times
slower); the 2-rank launches of the full config are covered by the sft/dpo distributed tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import pipeline
from marco_train import report

CONFIG = "configs/smollm2.yaml"
STAGES = ("cot", "mcts", "eval_base", "eval_cot", "split", "sft", "dpo", "eval_sft", "eval_dpo")


def smoke_overrides(runs_dir: Path) -> list:
    one_rank = [f"stages.{s}.nproc_per_node=1" for s in STAGES]
    return [f"runs_dir={runs_dir}", "experiment=smoke", *one_rank,
            "stages.cot.num_problems=3", "stages.cot.dev_problems=1", "stages.cot.dev_max_new_tokens=8",
            "stages.cot.dev_batch_size=1", "stages.split.process_check=false",
            "stages.mcts.num_problems=1", "stages.mcts.max_node_tokens=8", "stages.mcts.min_iterations=3",
            "stages.mcts.max_iterations=3", "stages.mcts.stop_correct=3", "stages.mcts.reflect_on_wrong=false",
            'stages.mcts.node_types.answer.prefills=["The answer is: 16</answer>","The answer is: 17</answer>"]',
            *[f"stages.{s}.training.{k}" for s in ("cot", "sft", "dpo")
              for k in ("max_steps=2", "global_batch_size=1", "per_device_batch_size=1")],
            *[f"stages.{s}.{k}" for s in ("eval_base", "eval_cot", "eval_sft", "eval_dpo")
              for k in ("num_problems=1", "max_new_tokens=8", "batch_size=1")]]


def done(runs_dir: Path, stage: str) -> dict:
    (directory,) = (runs_dir / "smoke").glob(f"{stage}-*")
    return json.loads((directory / "_DONE.json").read_text())


def tables(stdout: str) -> str:
    """The closing tables' titles and rows (the log lines around them carry times)."""
    after_title = stdout[stdout.index(report.TABLE_TITLE):]
    return "\n".join(line for line in after_title.splitlines() if line.startswith(("|", report.TABLE_TITLE)))


@pytest.mark.slow
def test_smollm2_config_runs_the_whole_dag_on_one_problem_and_a_rerun_is_cached(tmp_path, smollm2_dir):
    from marco_train.pipeline import build_plan

    plan = build_plan(CONFIG)
    for name in ("cot", "eval_base"):  # the anchor names the prepared directory; the rest start from the cot model
        assert plan.stages[name].cfg.model.name_or_path == str(smollm2_dir)
    assert {n: s.inputs.get("model") for n, s in plan.stages.items() if n not in ("cot", "eval_base")} == {
        "mcts": "cot", "eval_cot": "cot", "split": "cot", "sft": "cot", "dpo": "sft", "eval_sft": "sft",
        "eval_dpo": "dpo"}
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())  # else Trainer refuses

    env = {"OMP_NUM_THREADS": "1"}
    first = pipeline(CONFIG, *smoke_overrides(tmp_path), env=env)

    (shard,) = (tmp_path / "smoke").glob("mcts-*/trees/rank-00000.jsonl")
    (tree,) = [json.loads(line) for line in shard.read_text().splitlines()]
    assert tree["problem_id"] == "word-t-00200" and tree["answer"] == "16" and tree["task"] == "gsm8k"
    answers = {n["answer"]: n["correct"] for n in tree["nodes"] if n["type"] == "answer"}
    assert answers == {"16": True, "17": False}
    assert tree["nodes"][1]["text"].startswith("<sub_task>Firstly, I need to break down this task.")

    split = done(tmp_path, "split")["summary"]
    assert split["task"] == "gsm8k" and split["trees"] == 1 and split["pairs"]["rows"] == 1
    assert split["sft"]["rows"] >= 1 and split["paths"]["too_long"] == 0
    cot = done(tmp_path, "cot")["summary"]
    assert cot["traces"] == 2 and cot["dev_problems"] == 1 and cot["dev"]["samples"] == 1
    for stage in ("cot", "sft", "dpo"):
        record = done(tmp_path, stage)
        assert record["summary"]["steps"] == 2
        assert (tmp_path / "smoke" / f"{stage}-{record['fingerprint']}" / "model" / "model.safetensors").exists()
    assert done(tmp_path, "cot")["fingerprint_inputs"]["config"]["model"]["name_or_path"] == str(smollm2_dir)
    assert done(tmp_path, "dpo")["summary"]["pairs"]["kept"] == 1  # and dpo starts from the sft stage's model
    for stage in ("eval_base", "eval_cot", "eval_sft", "eval_dpo"):
        metrics = done(tmp_path, stage)["summary"]["metrics"]
        assert metrics["samples"] == 1 and 0.0 <= metrics["format_rate"] <= 1.0
    table = tables(first.stdout)
    assert [line.split("|")[1].strip() for line in table.splitlines()[3:7]] == ["base", "CoT", "SFT", "DPO"]
    assert "| variant | gsm8k |" in table

    again = pipeline(CONFIG, *smoke_overrides(tmp_path), env=env)
    cached = [line for line in again.stderr.splitlines() + again.stdout.splitlines() if "cached: cached" in line]
    assert sorted(line.split("] INFO ", 1)[1].split()[0] for line in cached) == sorted(STAGES)  # our log lines
    assert tables(again.stdout) == table


def test_the_base_model_comes_from_the_cache_and_a_stage_without_a_model_is_refused(monkeypatch, tmp_path):
    from marco_train.config import ConfigError
    from marco_train.pipeline import build_plan

    monkeypatch.setenv("MARCO_CACHE", str(tmp_path / "cache"))
    plan = build_plan(CONFIG)
    assert list(plan.stages) == ["cot", "eval_base", "mcts", "eval_cot", "split", "sft", "dpo", "eval_sft",
                                 "eval_dpo"]
    assert plan.stages["cot"].inputs == {} and plan.stages["eval_base"].inputs == {}
    assert plan.stages["eval_base"].cfg.model.name_or_path == str(tmp_path / "cache" / "smollm2-135m-instruct")
    for stage in ("cot", "eval_base"):
        with pytest.raises(ConfigError, match=rf"stages\.{stage}: set inputs\.model .* or model\.name_or_path"):
            build_plan(CONFIG, [f"stages.{stage}.model.name_or_path=''"])
