"""The package outside the clone, as a new user gets it: a wheel built from this tree, installed into a fresh
virtualenv (torch first, then the wheel under constraints.txt, as the README says), run as `marco-train` from an
empty directory. Its demo table (and every eval's samples) must equal the same reduced config run from the clone.

Slow (200 s here with the machine's load at ~5): two installs without byte-compiling (torch from local disk, the
rest from pip's cache after `make install`) and two reduced demo runs (~70 s each), the clone's started first so it
runs while the wheel is built and installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, REPO
from marco_train import report

# The demo with the search cut to 6 problems and 20 held-out problems per eval; sft and dpo keep their 2 ranks.
REDUCED = ["stages.mcts.num_problems=6", "stages.eval_base.num_problems=20", "stages.eval_sft.num_problems=20",
           "stages.eval_dpo.num_problems=20", "stages.eval_dpo_plain.num_problems=20"]
NOT_SOURCE = (".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", "wandb", ".pytest_cache")
TORCH = "torch==2.13.0"  # the Makefile's TORCH


def table(stdout: str) -> list:
    """The demo's closing tables: the markdown rows after their title (report.TABLE_TITLE)."""
    head, found, rest = stdout.partition(report.TABLE_TITLE + "\n")
    assert found, stdout[-3000:]
    rows = [line for line in rest.splitlines() if line.startswith("|")]
    # header, rule, base, SFT, DPO, plain DPO; then the differences: header, rule, five comparisons
    assert rows[0] == "| variant | toy |" and rows[6] == "| comparison | toy |" and len(rows) == 13, rest
    return rows


def checked(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def samples(runs: Path, name: str) -> str:
    (done,) = [d for d in (runs / "demo").glob(f"{name}-*") if (d / "_DONE.json").exists()]
    return (done / "samples.jsonl").read_text()


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_the_demo_like_the_clone(tmp_path):
    quiet = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}
    clone_runs, clone_log = tmp_path / "clone-runs", tmp_path / "clone.log"
    with open(clone_log, "w") as log:  # to a file: a pipe nobody reads would fill up and stall the run
        clone = subprocess.Popen([PYTHON, "launchers/pipeline.py", "--config", "configs/demo.yaml",
                                  f"runs_dir={clone_runs}", *REDUCED], cwd=REPO, env=dict(os.environ, **quiet),
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        # A clean copy of the tree (no build/ or egg-info left from another build), built like `pip wheel .`.
        source = tmp_path / "source"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        checked([PYTHON, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(tmp_path / "dist")],
                timeout=300)
        (wheel,) = (tmp_path / "dist").glob("marco_train-*.whl")

        venv = tmp_path / "venv"
        checked([PYTHON, "-m", "venv", str(venv)], timeout=120)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
        checked([*pip, TORCH], timeout=600)
        checked([*pip, "-c", str(REPO / "constraints.txt"), str(wheel)], timeout=900)

        user = tmp_path / "user"  # an empty directory outside the clone; nothing of the clone on the path
        user.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(quiet, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
        run = dict(cwd=user, env=env, timeout=900)
        marco = str(venv / "bin" / "marco-train")
        assert "stage kinds: bootstrap, cot, mcts, split, sft, dpo, eval" in checked([marco, "--help"], **run).stdout
        site = checked([str(venv / "bin" / "python"), "-c", "import marco_train; print(marco_train.__file__)"],
                       **run).stdout.strip()
        assert Path(site).is_relative_to(venv) and not Path(site).is_relative_to(REPO)
        listed = checked([marco, "ls"], **run).stdout
        assert "configs/demo.yaml " in listed and "mcts_data/problems/toy_heldout.jsonl" in listed
        assert f"(from {Path(site).parent / '_shipped' / 'configs'};" in listed
        plan = checked([str(venv / "bin" / "python"), "-m", "marco_train", "run", "--config", "configs/demo.yaml",
                        "--dry-run", f"runs_dir={user / 'runs'}"], **run).stdout
        assert plan.count("[dry-run]") == 10 and not (user / "runs").exists()

        wheel_runs = user / "runs"
        demo = checked([marco, "run", "--config", "configs/demo.yaml", *REDUCED], **run)
        assert sorted(os.listdir(user)) == ["runs"]  # the default runs_dir, relative to where the user runs
    except BaseException:
        clone.kill()  # its torchrun children die with it (launch.run_subprocess)
        raise
    finally:
        clone.wait(timeout=900)
    assert clone.returncode == 0, clone_log.read_text()[-4000:]

    assert table(demo.stdout) == table(clone_log.read_text())
    assert (wheel_runs / "demo" / "results.json").read_text() == (clone_runs / "demo" / "results.json").read_text()
    for name in ("eval_base", "eval_sft", "eval_dpo", "eval_dpo_plain"):
        assert samples(wheel_runs, name) == samples(clone_runs, name)
    for runs in (wheel_runs, clone_runs):  # 2-rank stages, launched through `torchrun -m marco_train stage`
        for name in ("sft", "dpo"):
            (done,) = (runs / "demo").glob(f"{name}-*/_DONE.json")
            assert json.loads(done.read_text())["world_size"] == 2
    (mcts_config,) = (wheel_runs / "demo").glob("mcts-*/config.yaml")  # the wheel's own problem file was read
    assert f"problems_file: {Path(site).parent / '_shipped' / 'mcts_data' / 'problems' / 'toy_train.jsonl'}" in \
        mcts_config.read_text()
