"""configs/gpu/qwen2.5-1.5b.yaml (a whole pipeline for GPUs, not run here) and the command in the SLURM script's
usage comment pass --dry-run. With the hub online the hub names are not looked up (they need not be in the cache;
the plan says "revision unknown" for each); offline (HF_HUB_OFFLINE=1) the plan refuses the first one missing from
the cache, naming it."""

import re
import shlex

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from marco_train.cli import pipeline_main
from marco_train.config import ConfigError
from marco_train.pipeline import build_plan

CONFIG = "configs/gpu/qwen2.5-1.5b.yaml"
OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def online(monkeypatch):
    for name in OFFLINE:
        monkeypatch.delenv(name, raising=False)


def dry_run(capsys, *args):
    pipeline_main(["--config", *args, "--dry-run"])
    return [line.split("[dry-run] ", 1)[1].split() for line in capsys.readouterr().out.splitlines()]


def test_the_gpu_config_plans_every_stage(online, capsys, tmp_path):
    rows = dry_run(capsys, CONFIG, f"runs_dir={tmp_path}")
    assert [r[0] for r in rows] == ["mcts", "eval_base_gsm8k", "eval_base_math500", "split", "sft", "dpo",
                                    "eval_sft_gsm8k", "eval_sft_math500", "eval_dpo_gsm8k", "eval_dpo_math500"]
    reasons = {r[0]: " ".join(r[3:]) for r in rows}
    assert all(why.startswith("RUN: never run") for why in reasons.values())
    # the hub names are not looked up, and the plan says so: their revision enters the fingerprint once cached
    assert reasons["mcts"] == ("RUN: never run; problems_file openai/gsm8k:main (revision unknown: not in the local "
                               "hub cache); model.name_or_path Qwen/Qwen2.5-32B-Instruct (revision unknown: not in "
                               "the local hub cache)")
    plan = build_plan(CONFIG)
    mcts, split, sft, dpo = (plan.stages[n].cfg for n in ("mcts", "split", "sft", "dpo"))
    assert (mcts.engine, mcts.model.name_or_path, mcts.engine_options.tensor_parallel_size) == \
        ("vllm", "Qwen/Qwen2.5-32B-Instruct", 8)
    assert (mcts.task, mcts.problems_file, mcts.split) == ("gsm8k", "openai/gsm8k:main", "train")
    assert split.model.name_or_path == sft.model.name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"  # the student
    assert dpo.model.name_or_path == "" and plan.stages["dpo"].inputs == {"data": "split", "model": "sft"}
    assert (sft.training.deepspeed, dpo.training.learning_rate) == ("configs/deepspeed/zero2.json", 5e-7)
    tasks = {(plan.stages[n].cfg.variant, plan.stages[n].cfg.task) for n in plan.stages if n.startswith("eval")}
    assert tasks == {(v, t) for v in ("base", "SFT", "DPO") for t in ("gsm8k", "math500")}
    assert "NOT RUN ON A GPU HERE" in (REPO / CONFIG).read_text()


def test_offline_the_plan_names_the_first_hub_name_missing_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # an empty cache, whatever this machine has
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "empty-hf-home" / "datasets")
    with pytest.raises(ConfigError, match=r"qwen2\.5-1\.5b\.yaml:\d+: stages\.mcts\.(problems_file: dataset "
                                          r"'openai/gsm8k'|model\.name_or_path: model 'Qwen/Qwen2\.5-32B-Instruct')"
                                          r" is not in the local"):
        build_plan(CONFIG)


def test_the_slurm_scripts_usage_command_passes_dry_run(online, capsys, tmp_path):
    script = (REPO / "launchers" / "slurm" / "stage.sbatch").read_text()
    (line,) = [x for x in script.splitlines() if re.match(r"#\s+sbatch ", x)]
    words = shlex.split(line.lstrip("#"))
    kind, config, *overrides = words[words.index("launchers/slurm/stage.sbatch") + 1:]
    assert (REPO / "launchers" / f"{kind}.py").is_file() and (REPO / config).is_file()
    rows = dry_run(capsys, config, f"runs_dir={tmp_path}", *overrides)
    assert kind in [r[1] for r in rows]
    plan = build_plan(config, overrides)
    (stage,) = [s for s in plan.stages.values() if s.kind == kind]
    for override in overrides:  # every override names a key of that stage, and took effect
        key, value = override.split("=", 1)
        _, name, rest = key.split(".", 2)
        assert name == stage.name and OmegaConf.select(stage.cfg, rest) == OmegaConf.from_dotlist([f"v={value}"]).v, \
            override
    assert stage.cfg.nnodes == 2 and stage.cfg.training.learning_rate == 5e-7
