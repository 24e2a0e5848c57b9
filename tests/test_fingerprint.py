"""A cache that never serves a stale result: the code, every local input and only what a stage reads go into its
fingerprint (issue: wrong results served silently; nothing half-done counted as done; hash what is read)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TOY_CHECKPOINT
from marco_train.io import hash_path
from marco_train.pipeline import DONE_FILE, build_plan, run_plan

FINGERPRINTS = ("import json, sys; from marco_train.pipeline import build_plan; "
                "plan = build_plan(sys.argv[1], sys.argv[2:]); "
                "print(json.dumps({n: s.fingerprint for n, s in plan.stages.items()}))")


@pytest.fixture
def clone(tmp_path):
    """A copy of the package, the configs, the problem files and the plug-in probe stages, run from its root."""
    root = tmp_path / "clone"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("marco_train", "configs", "mcts_data/problems", "tests/probe_stages"):
        shutil.copytree(REPO / part, root / part, ignore=skip)

    def python(*args, check=True):
        env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{root / 'tests'}", WANDB_MODE="disabled")
        proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        if check and proc.returncode:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return root, python


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


def test_a_library_edit_changes_exactly_the_stages_whose_code_imports_it(clone, tmp_path):
    root, python = clone

    def fingerprints():
        return json.loads(python("-c", FINGERPRINTS, "configs/demo.yaml", f"runs_dir={tmp_path / 'runs'}").stdout)

    before = fingerprints()
    edit(root / "marco_train/data/split.py", "return min(range(len(lengths)), key=lambda i: lengths[i])",
         "return max(range(len(lengths)), key=lambda i: lengths[i])")
    after_split = fingerprints()
    assert {n for n in before if before[n] != after_split[n]} == {"split", "sft", "dpo", "dpo_plain", "eval_sft",
                                                                     "eval_dpo", "eval_dpo_plain"}
    edit(root / "marco_train/train/losses.py", "return -(1.0 - epsilon) * F.logsigmoid(delta) - epsilon *",
         "return -(1.0 - 2 * epsilon) * F.logsigmoid(delta) - 2 * epsilon *")
    after_loss = fingerprints()
    assert {n for n in before if after_split[n] != after_loss[n]} == {"dpo", "dpo_plain", "eval_dpo", "eval_dpo_plain"}
    # comments, docstrings and layout are not code
    edit(root / "marco_train/train/losses.py", '"""−(1−ε)·log σ(Δ) − ε·log σ(−Δ), elementwise',
         '"""A reworded docstring.\n\n    −(1−ε)·log σ(Δ) − ε·log σ(−Δ), elementwise')
    edit(root / "marco_train/data/split.py", "def choose_index(", "# a new comment\n\n\ndef choose_index(")
    assert fingerprints() == after_loss


def test_dry_run_names_the_changed_module_and_an_edited_plug_in_stage_reruns(clone, tmp_path):
    root, python = clone
    config = tmp_path / "chain.yaml"
    config.write_text(f"experiment: chain\nruns_dir: {tmp_path / 'runs'}\nwandb: {{mode: disabled}}\nstages:\n"
                      f"  a: {{kind: probe_stages.probe, value: 1}}\n"
                      f"  b: {{kind: probe_stages.probe, inputs: {{x: a}}, value: 10}}\n")
    run = ["-c", "from marco_train.cli import pipeline_main; pipeline_main()", "--config", str(config)]
    python(*run)
    edit(root / "marco_train/faults.py", "nth = int(parts[2]) if len(parts) > 2 else 1",
         "nth = int(parts[2]) if len(parts) > 2 else 1\n    nth = max(nth, 1)")
    out = python(*run, "--dry-run").stdout
    lines = {line.split("[dry-run] ", 1)[1].split()[0]: line for line in out.splitlines() if "[dry-run]" in line}
    assert "RUN: changed since a-" in lines["a"] and "code of marco_train.faults changed" in lines["a"]
    assert "code of marco_train.faults changed" in lines["b"] and "upstream a changed" in lines["b"]
    python(*run)
    probe = root / "tests/probe_stages/probe.py"
    edit(probe, "(str(upstream + ctx.cfg.value))", "(str(upstream + 2 * ctx.cfg.value))")
    edit(probe, '{"total": upstream + ctx.cfg.value,', '{"total": upstream + 2 * ctx.cfg.value,')
    out = python(*run, "--dry-run").stdout
    assert out.count("code of probe_stages.probe changed") == 2
    python(*run)
    finished = [json.loads(p.read_text()) for p in (tmp_path / "runs/chain").glob(f"b-*/{DONE_FILE}")]
    assert sorted(d["summary"]["total"] for d in finished) == [11, 11, 22]  # the edited code's result is new


def test_an_edit_after_planning_stops_the_run_before_the_stage_runs(tmp_path, monkeypatch):
    """A plug-in stage in a temporary module: edited between planning and running, it must not run under the
    planned fingerprint (which names the old code)."""
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    (tmp_path / "mylab" / "stage.py").write_text(
        "from dataclasses import dataclass\nfrom marco_train.config import StageConfig\n\n\n@dataclass\n"
        "class Config(StageConfig):\n    kind: str = 'mylab.stage'\n\n\ndef run(ctx):\n    return {'value': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "one.yaml"
    config.write_text(f"experiment: one\nruns_dir: {tmp_path / 'runs'}\nwandb: {{mode: disabled}}\n"
                      f"stages:\n  s: {{kind: mylab.stage}}\n")
    plan = build_plan(str(config))
    edit(tmp_path / "mylab" / "stage.py", "return {'value': 1}", "return {'value': 2}")
    with pytest.raises(RuntimeError, match="stage 's': code of mylab.stage changed since this run was planned"):
        run_plan(plan)
    assert not plan.stages["s"].out_dir.exists()


def test_library_versions_of_the_closure_only(tmp_path, monkeypatch):
    from marco_train.code_hash import CodeIndex

    site = tmp_path / "site-packages"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text("X = 1\n")
    info = site / "fakelib-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelib\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("fakelib\n")
    src = tmp_path / "src"
    (src / "libprobe").mkdir(parents=True)
    (src / "libprobe" / "__init__.py").write_text("")
    (src / "libprobe" / "uses.py").write_text("import json\n\n\ndef f():\n    import fakelib\n    return fakelib.X\n")
    (src / "libprobe" / "plain.py").write_text("import os\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(src))
    uses = CodeIndex().closure("libprobe.uses")
    assert uses["libraries"] == {"fakelib": "fakelib==1.0", "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    assert set(uses["modules"]) == {"libprobe", "libprobe.uses"}  # json: the standard library; fakelib: by version
    assert "fakelib" not in CodeIndex().closure("libprobe.plain")["libraries"]
    info.rename(site / "fakelib-2.0.dist-info")
    (site / "fakelib-2.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelib\nVersion: 2.0\n")
    assert CodeIndex().closure("libprobe.uses")["libraries"]["fakelib"] == "fakelib==2.0"
    shutil.rmtree(site / "fakelib")
    shutil.rmtree(site / "fakelib-2.0.dist-info")
    import importlib

    importlib.invalidate_caches()
    assert CodeIndex().closure("libprobe.uses")["libraries"]["fakelib"] == "not installed"


# ----------------------------------------------------------------------------------------------- inputs by content


def model_copy(tmp_path, name: str) -> Path:
    return Path(shutil.copytree(TOY_CHECKPOINT, tmp_path / name))


def test_every_local_path_a_stage_reads_is_hashed_by_content(tmp_path):
    local, special, reference = (model_copy(tmp_path, n) for n in ("local", "special", "reference"))
    deepspeed = tmp_path / "zero2.json"
    shutil.copy(REPO / "configs/deepspeed/zero2.json", deepspeed)
    config = tmp_path / "p.yaml"
    config.write_text(f"""experiment: p
runs_dir: {tmp_path / 'runs'}
stages:
  data: {{kind: probe_stages.probe}}
  eval: {{kind: eval, model: {{name_or_path: {local}}}}}
  mcts: {{kind: mcts, model: {{name_or_path: {local}}}, special_model: {{name_or_path: {special}}}}}
  sft: {{kind: sft, inputs: {{data: data}}, model: {{name_or_path: {local}}}, training: {{deepspeed: {deepspeed}}}}}
  dpo: {{kind: dpo, inputs: {{data: data, model: data}}, reference: {{name_or_path: {reference}}}}}
""")

    def fingerprints():
        return {n: s.fingerprint for n, s in build_plan(str(config)).stages.items()}

    before = fingerprints()
    weights = local / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # new weights, same size
    weights.write_bytes(bytes(data))
    after = fingerprints()
    assert {n for n in before if before[n] != after[n]} == {"eval", "mcts", "sft"}
    (special / "generation_config.json").write_text('{"do_sample": false}\n')
    deepspeed.write_text(deepspeed.read_text().replace("}", " }", 1))
    (reference / "config.json").write_text((reference / "config.json").read_text() + "\n")
    again = fingerprints()
    assert {n for n in before if after[n] != again[n]} == {"mcts", "sft", "dpo"}
    plan = build_plan(str(config))
    assert set(plan.stages["sft"].fingerprint_inputs["files"]) == {"model.name_or_path", "training.deepspeed"}
    assert plan.stages["dpo"].fingerprint_inputs["files"]["reference.name_or_path"] == "sha256:" + hash_path(reference)


def test_hash_cache_reuses_unchanged_files_and_sees_rewritten_ones(tmp_path, monkeypatch):
    from marco_train.io import HashCache

    monkeypatch.setattr(HashCache, "RACY_SECONDS", 0.0)
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "w.bin").write_bytes(b"a" * 1000)
    cache = HashCache(tmp_path / "hashes.json")
    first = hash_path(d, cache)
    cache.save()
    reads = []
    real_open = open

    def counting_open(path, *a, **kw):
        reads.append(Path(path).name)
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", counting_open)
    reloaded = HashCache(tmp_path / "hashes.json")
    assert hash_path(d, reloaded) == first and reads == []  # unchanged inode, size, mtime_ns, ctime_ns: not read
    with real_open(d / "w.bin", "r+b") as f:  # same inode, same size, new bytes
        f.write(b"b")
    assert hash_path(d, reloaded) != first and reads == ["w.bin"]
    assert hash_path(d, reloaded) == hash_path(d)  # the cached value is the plain content hash


def test_a_fresh_file_is_not_trusted_to_the_cache(tmp_path):
    from marco_train.io import HashCache

    path = tmp_path / "new.bin"
    path.write_bytes(b"x")
    cache = HashCache(tmp_path / "hashes.json")
    hash_path(path, cache)
    assert cache.entries == {}  # modified within RACY_SECONDS: a coarse clock could hide the next write


def test_hub_id_is_pinned_to_the_revision_the_local_hub_cache_knows(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = tmp_path / "p.yaml"
    config.write_text(f"experiment: p\nruns_dir: {tmp_path / 'runs'}\nstages:\n"
                      f"  e: {{kind: eval, model: {{name_or_path: someorg/somemodel}}}}\n")
    unknown = build_plan(str(config)).stages["e"]
    assert unknown.fingerprint_inputs["files"]["model.name_or_path"] == \
        "hub:someorg/somemodel (revision unknown: not in the local hub cache)"
    capsys.readouterr()
    run_plan(build_plan(str(config)), dry_run=True)
    assert "RUN: never run; model.name_or_path someorg/somemodel (revision unknown: not in the local hub cache)" \
        in capsys.readouterr().out
    ref = tmp_path / "hub/models--someorg--somemodel/refs/main"
    ref.parent.mkdir(parents=True)
    ref.write_text("0123abcd")
    pinned = build_plan(str(config)).stages["e"]
    assert pinned.fingerprint_inputs["files"]["model.name_or_path"] == "hub:someorg/somemodel@model 0123abcd"
    ref.write_text("4567ef01")
    assert build_plan(str(config)).stages["e"].fingerprint not in (unknown.fingerprint, pinned.fingerprint)


# ----------------------------------------------------------------------------------------------- half-done is not done


def chain(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = tmp_path / "chain.yaml"
    config.write_text(f"experiment: chain\nruns_dir: {tmp_path / 'runs'}\nwandb: {{mode: disabled}}\nstages:\n"
                      f"  a: {{kind: probe_stages.probe, value: 1}}\n"
                      f"  b: {{kind: probe_stages.probe, inputs: {{x: a}}, value: 10}}\n")
    return str(config)


@pytest.mark.parametrize("content", ["", "{\"stage\": \"b\", \"summ", "[1, 2]", "null"])
def test_a_damaged_done_file_counts_as_not_done(tmp_path, monkeypatch, capsys, content):
    config = chain(tmp_path, monkeypatch)
    run_plan(build_plan(config))
    done = build_plan(config).stages["b"].out_dir / DONE_FILE
    done.write_text(content)
    capsys.readouterr()
    run_plan(build_plan(config), dry_run=True)
    out = capsys.readouterr().out
    assert f"WARNING {done}: " in out and "the stage counts as not done and runs again" in out
    line = next(x for x in out.splitlines() if "[dry-run] b " in x)
    assert f"RUN: its {DONE_FILE} is unreadable: runs again" in line
    results = run_plan(build_plan(config))
    assert results["b"]["total"] == 11 and json.loads(done.read_text())["summary"]["total"] == 11


def test_a_finished_stage_whose_output_is_gone_names_it_and_suggests_force(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = tmp_path / "p.yaml"
    config.write_text(f"experiment: p\nruns_dir: {tmp_path / 'runs'}\nstages:\n  bootstrap: {{kind: bootstrap}}\n"
                      f"  eval_base: {{kind: eval, inputs: {{model: bootstrap}}, num_problems: 1}}\n")
    run_plan(build_plan(str(config)), until="bootstrap")
    bootstrap = build_plan(str(config)).stages["bootstrap"]
    shutil.rmtree(bootstrap.out_dir / "model")
    capsys.readouterr()
    run_plan(build_plan(str(config)), dry_run=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if "[dry-run] eval_base" in x)
    assert "but it cannot: stage 'eval_base' needs" in line and "--force bootstrap" in line
    with pytest.raises(RuntimeError) as e:
        run_plan(build_plan(str(config)))
    assert str(e.value) == (f"stage 'eval_base' needs {bootstrap.out_dir / 'model'} from stage 'bootstrap', which is "
                            f"marked done ({DONE_FILE}) but that output is gone; re-run it: `marco-train run "
                            f"--config {config} --force bootstrap`")
    run_plan(build_plan(str(config)), force=["bootstrap"], until="bootstrap")
    assert (bootstrap.out_dir / "model" / "config.json").exists()


# ----------------------------------------------------------------------------------------------- only what is read


def test_bootstrap_copy_hashes_only_its_checkpoint(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    shutil.copy(REPO / "mcts_data/problems/toy_heldout.jsonl", heldout)
    config = tmp_path / "p.yaml"
    config.write_text(f"experiment: p\nruns_dir: {tmp_path / 'runs'}\nstages:\n"
                      f"  bootstrap: {{kind: bootstrap, heldout_problems: {heldout}}}\n"
                      f"  eval: {{kind: eval, inputs: {{model: bootstrap}}, num_problems: 200}}\n")

    def bootstrap(*overrides):
        return build_plan(str(config), list(overrides)).stages["bootstrap"]

    copy = bootstrap()
    assert set(copy.fingerprint_inputs["files"]) == {"checkpoint"}
    assert set(copy.fingerprint_inputs["config"]) == {"kind", "inputs", "retrain", "checkpoint"}
    lines = heldout.read_text().splitlines(keepends=True)
    heldout.write_text("".join(lines[:300]) + lines[300].replace('"id": "', '"id": "x') + "".join(lines[301:]))
    assert bootstrap().fingerprint == copy.fingerprint  # a held-out line past the 200 the eval reads
    assert bootstrap("stages.bootstrap.steps=7").fingerprint == copy.fingerprint  # a training key a copy ignores
    retrain = bootstrap("stages.bootstrap.retrain=true")
    assert set(retrain.fingerprint_inputs["files"]) == {"train_problems", "heldout_problems"}
    assert bootstrap("stages.bootstrap.retrain=true", "stages.bootstrap.steps=7").fingerprint != retrain.fingerprint


# ----------------------------------------------------------------------------------------------- the reference cache

REFERENCE_KEYS = """import json, sys
from pathlib import Path
from types import SimpleNamespace
from omegaconf import OmegaConf
from marco_train.train.reference_cache import reference_cache_path

runs, edits = Path(sys.argv[1]), json.loads(sys.argv[2])
cfg = OmegaConf.create({"model": {"dtype": "fp32", "attn_implementation": "sdpa"}, "reference_cache_dir": ""})
ctx = SimpleNamespace(cfg=cfg, root=SimpleNamespace(runs_dir=str(runs)), out_dir=runs / "e" / "dpo-x")
pairs = [{"prompt_ids": [1, 2], "prefix_ids": [3], "chosen_ids": [4], "rejected_ids": [5]}]
keys = [reference_cache_path(ctx, "marco_train/toy/checkpoint", pairs).name]
for path, old, new in edits:  # each edit made here, then the key asked again (nothing is re-imported)
    text = Path(path).read_text()
    assert old in text, (path, old)  # an edit that finds nothing would test nothing
    Path(path).write_text(text.replace(old, new, 1))
    keys.append(reference_cache_path(ctx, "marco_train/toy/checkpoint", pairs).name)
print(json.dumps(keys))
"""


def test_reference_logprob_cache_key_covers_the_code_that_computes_it(clone, tmp_path):
    root, python = clone
    edits = [("marco_train/train/logprobs.py", "- torch.logsumexp(logits, dim=-1)", "- torch.logsumexp(logits, -1)"),
             ("marco_train/train/prefix_sharing.py", 'getattr(config, "_attn_implementation", None) or "eager"',
              'getattr(config, "_attn_implementation", None) or str("eager")'),
             ("marco_train/train/logprobs.py", "def _unwrap(", "# a comment only\ndef _unwrap(")]
    keys = json.loads(python("-c", REFERENCE_KEYS, str(tmp_path / "runs"), json.dumps(edits)).stdout)
    assert len(set(keys[:3])) == 3  # each code edit: a new key
    assert keys[3] == keys[2]  # a comment is not code
