"""The `marco-train` command (marco_train/cli.py): its help, `ls`, `cat`, dispatch to the stage kinds, the launcher
aliases, and the runner launching ranks as `torchrun ... -m marco_train stage`, never a file path."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PYTHON, REPO
from marco_train.cli import main
from marco_train.config import ConfigError
from marco_train.launch import stage_command
from marco_train.pipeline import STAGE_MODULES, build_plan


def command(capsys, *argv) -> tuple:
    """(exit code, stdout, stderr) of `marco-train argv...`, in-process."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_help_names_every_command_and_stage_kind_with_examples(capsys):
    code, out, _ = command(capsys, "--help")
    assert code == 0
    for name in ("run", "stage", "ablate", "show-tree", "prepare-smollm2", "push-to-hub", "ls", "cat"):
        assert f"\n  {name} " in out
    assert f"stage kinds: {', '.join(STAGE_MODULES)} " in out and "bootstrap, cot, mcts, split, sft, dpo, eval" in out
    assert "examples:\n  marco-train run --config configs/demo.yaml" in out
    assert "torchrun --nproc_per_node=8 -m marco_train dpo --config my.yaml" in out
    code, _, err = command(capsys)  # no command: the same help, on stderr, exit 2
    assert code == 2 and err.startswith("usage: marco-train <command>")


def test_an_unknown_command_is_one_line_with_a_suggestion(capsys):
    code, out, err = command(capsys, "rnu", "--config", "configs/demo.yaml")
    assert (code, out) == (2, "")
    assert err.startswith("error: unknown command 'rnu' (commands: run, stage, ablate, show-tree, prepare-smollm2, "
                          "push-to-hub, ls, cat, bootstrap, cot, mcts, split, sft, dpo, eval); did you mean 'run'?")


def test_ls_lists_the_shipped_configs_and_cat_prints_one(capsys):
    code, out, _ = command(capsys, "ls")
    assert code == 0
    demo_line = next(line for line in out.splitlines() if line.startswith("configs/demo.yaml "))
    assert demo_line.split(None, 1)[1] == "The embedded default: the whole DAG on the toy world, on CPU, no downloads."
    listed = [line.split()[0] for line in out.splitlines() if line.startswith(("configs/", "mcts_data/"))]
    problems = list((REPO / "mcts_data" / "problems").glob("*.jsonl"))
    assert len(listed) == len(list((REPO / "configs").rglob("*.*"))) + len(problems) and "configs/demo.yaml" in listed
    for name in ("demo", "configs/demo.yaml"):
        code, out, _ = command(capsys, "cat", name)
        assert code == 0 and out == (REPO / "configs" / "demo.yaml").read_text()
    code, out, _ = command(capsys, "cat", "ablations/paper")
    assert out == (REPO / "configs" / "ablations" / "paper.yaml").read_text()
    code, out, err = command(capsys, "cat", "nope")
    assert (code, out) == (2, "") and err.startswith("error: no shipped config 'nope' (shipped: configs/ablations/")


def test_the_stage_kind_commands_run_their_kind_and_refuse_another(capsys, tmp_path):
    code, _, err = command(capsys, "sft", "--config", "configs/demo.yaml", "--stage", "dpo", f"runs_dir={tmp_path}")
    assert code == 2
    assert err == ("error: configs/demo.yaml: stage 'dpo' is a 'dpo' stage; use `marco-train dpo` "
                   "(or `marco-train stage --stage dpo`)\n")


def test_the_runner_launches_ranks_as_a_module_not_a_file(tmp_path):
    plan = build_plan("configs/demo.yaml", [f"runs_dir={tmp_path}", "stages.dpo.training.epochs=1"])
    cmd = stage_command(plan, plan.stages["dpo"], force=True)
    assert cmd == [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "marco_train",
                   "stage", "--config", "configs/demo.yaml", "--stage", "dpo", "--force",
                   f"runs_dir={tmp_path}", "stages.dpo.training.epochs=1"]
    assert not any(part.endswith(".py") for part in cmd)


def test_dry_run_from_another_directory_with_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([PYTHON, "-m", "marco_train", "run", "--config", "demo", "--dry-run",
                           f"runs_dir={tmp_path / 'runs'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    planned = [line.split("[dry-run] ", 1)[1].split()[0] for line in proc.stdout.splitlines() if "[dry-run]" in line]
    assert planned == ["bootstrap", "mcts", "eval_base", "split", "sft", "dpo", "dpo_plain", "eval_sft", "eval_dpo",
                       "eval_dpo_plain"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("launcher, usage", [("pipeline.py", "launchers/pipeline.py [-h] --config CONFIG"),
                                             ("dpo.py", "launchers/dpo.py [-h] --config CONFIG"),
                                             ("stage.py", "launchers/stage.py [-h] --config CONFIG"),
                                             ("show_tree.py", "launchers/show_tree.py [-h] [--id ID]"),
                                             ("push_to_hub.py", "launchers/push_to_hub.py [-h] --repo REPO")])
def test_the_launchers_are_aliases_of_the_subcommands(launcher, usage):
    proc = subprocess.run([PYTHON, f"launchers/{launcher}", "--help"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {usage}")


def test_a_config_given_by_short_name_is_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert build_plan("demo").root.experiment == "demo"
    with pytest.raises(ConfigError, match=r"^nope.yaml: config file not found$"):
        build_plan("nope.yaml")
