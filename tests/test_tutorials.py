"""The tutorials of docs/tutorials/ run as written: their `# file:` blocks are written into a fresh directory that
looks like the repository root (configs/, mcts_data/, launchers/ and marco_train/ linked in), then each ```bash
block runs in one bash session there (`python` is this interpreter, `marco-train` its installed command). A block
whose first line is `# not run here` needs GPUs, vLLM or a hub login; the tutorial says so."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCS = REPO / "docs" / "tutorials"
NOT_RUN = "# not run here"
COMMAND = Path(sys.executable).parent / "marco-train"  # `pip install -e .` (make install) puts it beside python


def blocks(doc: Path):
    """(files {path: text}, bash blocks [text]) of a tutorial."""
    text = doc.read_text()
    files = dict(re.findall(r"^```\w*\n# file: (\S+)\n(.*?)^```", text, re.M | re.S))
    bash = re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)
    return files, bash


def workdir(tmp_path: Path, files: dict) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("configs", "mcts_data", "launchers", "marco_train"):
        (root / name).symlink_to(REPO / name)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    # the installed console script itself (not `python -m`, which would put the working directory on sys.path)
    (shim / "marco-train").symlink_to(COMMAND)
    return root


def run_tutorial(name: str, tmp_path: Path, online: bool = False):
    """online: without the offline switches of the hub (the GPU config's dry-run looks nothing up then)."""
    files, bash = blocks(DOCS / name)
    root = workdir(tmp_path, files)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE") if online else ():
        env.pop(switch, None)
    outputs = []
    for block in bash:
        if block.startswith(NOT_RUN):
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{name}: {block}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" \
                                     f"{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    assert outputs, f"{name}: no command ran"
    return root, "\n".join(outputs)


def test_every_tutorial_is_tested_here():
    tested = {"your_own_task.md", "your_own_model.md", "your_own_data.md", "use_the_trained_model.md",
              "first_run_on_gpus.md"}
    assert {p.name for p in DOCS.glob("*.md")} == tested
    for name in tested:
        files, bash = blocks(DOCS / name)
        assert bash, name
        for block in bash:
            assert block.startswith(NOT_RUN) or "marco-train " in block or "python " in block, (name, block)
    assert COMMAND.is_file(), f"{COMMAND}: the marco-train command is not installed (make install)"


@pytest.mark.slow
def test_your_own_task(tmp_path):
    root, out = run_tutorial("your_own_task.md", tmp_path)
    assert "| variant | mylab.tasks.sums |" in out
    (summary,) = (root / "runs" / "sums").glob("split-*/summary.json")
    assert "none (task 'sums' has no step checker)" in summary.read_text()
    listed = [x for x in out.splitlines() if x.startswith("sums-")]
    assert listed and all(" solved " in x for x in listed)


@pytest.mark.slow
def test_your_own_model(tmp_path):
    root, out = run_tutorial("your_own_model.md", tmp_path)
    assert "| variant | toy |" in out and "| mine |" in out and "| mine + SFT |" in out
    (metrics,) = (root / "runs" / "mymodel").glob("sft-*/metrics.jsonl")
    rates = [line for line in metrics.read_text().splitlines() if '"learning_rate"' in line]
    assert len(rates) == 4 and len({re.search(r'"learning_rate": ([^,}]+)', x).group(1) for x in rates}) == 1


@pytest.mark.slow
def test_your_own_data(tmp_path):
    root, out = run_tutorial("your_own_data.md", tmp_path)
    assert (root / "runs" / "mydata").is_dir()
    assert list((root / "runs" / "mydata").glob("dpo-*/model/model.safetensors"))
    assert list((root / "runs" / "mydata").glob("split_authors-*/_DONE.json"))
    assert "wrote trees.html" in out


@pytest.mark.slow
def test_use_the_trained_model(tmp_path):
    root, out = run_tutorial("use_the_trained_model.md", tmp_path)
    assert "<answer>The answer is:" in out
    assert "| trained |" in out


def test_first_run_on_gpus(tmp_path):
    root, out = run_tutorial("first_run_on_gpus.md", tmp_path, online=True)
    assert "[dry-run] mcts" in out and "[dry-run] eval_dpo_math500" in out
