"""The DAG runner: fingerprints, caching, exact downstream re-runs, --from/--until/--force, dry-run, locks, faults."""

import json
import signal

import pytest

from conftest import pipeline
from marco_train.pipeline import DONE_FILE, StageLock, build_plan, run_plan

CHAIN = """experiment: chain
runs_dir: {runs}
wandb: {{mode: disabled}}
stages:
  a:
    kind: probe_stages.probe
    value: 1
    data_file: {data}
  b:
    kind: probe_stages.probe
    inputs: {{x: a}}
    value: 10
  c:
    kind: probe_stages.probe
    inputs: {{x: b}}
    value: 100
  side:
    kind: probe_stages.probe
    value: 5
"""


@pytest.fixture
def chain(tmp_path, monkeypatch):
    data = tmp_path / "data.txt"
    data.write_text("hello\n")
    cfg = tmp_path / "chain.yaml"
    cfg.write_text(CHAIN.format(runs=tmp_path / "runs", data=data))
    log = tmp_path / "ran.log"
    monkeypatch.setenv("MARCO_PROBE_LOG", str(log))
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def run(*overrides, **kw):
        log.write_text("")
        results = run_plan(build_plan(str(cfg), list(overrides)), **kw)
        return [line.split()[0] for line in log.read_text().splitlines()], results

    return run, cfg, data


def test_runs_in_order_then_everything_cached(chain):
    run, _, _ = chain
    ran, results = run()
    assert ran.index("a") < ran.index("b") < ran.index("c") and sorted(ran) == ["a", "b", "c", "side"]
    assert results["c"]["total"] == 111
    ran, results = run()
    assert ran == [] and results["c"]["total"] == 111


def test_changed_key_reruns_exactly_downstream(chain):
    run, _, _ = chain
    run()
    ran, results = run("stages.b.value=20")
    assert ran == ["b", "c"] and results["c"]["total"] == 121


def test_changed_input_byte_reruns_from_that_stage(chain):
    run, _, data = chain
    run()
    data.write_text("hellO\n")
    ran, _ = run()
    assert ran == ["a", "b", "c"]


def test_runtime_only_keys_rerun_nothing(chain):
    run, _, _ = chain
    run()
    ran, _ = run("stages.b.log_every=1", "wandb.mode=offline", "wandb.project=other", "stages.c.nproc_per_node=1",
                 "stages.c.dist_timeout_s=60")
    assert ran == []


def test_from_until_force(chain):
    run, _, _ = chain
    ran, _ = run(until="b")
    assert ran == ["a", "b"]
    run()
    ran, _ = run(start="b")
    assert ran == ["b", "c"]
    ran, _ = run(force=["a"])
    assert ran == ["a"]  # same fingerprint: downstream stays cached


def test_dry_run_explains(chain, capsys):
    run, _, _ = chain
    ran, _ = run(dry_run=True)
    assert ran == [] and "never run" in capsys.readouterr().out
    run()
    run("stages.b.value=7", dry_run=True)
    out = capsys.readouterr().out
    lines = {line.split("[dry-run] ", 1)[1].split()[0]: line for line in out.splitlines() if "[dry-run]" in line}
    assert "cached" in lines["a"] and "cached" in lines["side"]
    assert "config.value: 10 -> 7" in lines["b"]
    assert "upstream b changed" in lines["c"]


def test_done_file_and_resolved_config_written(chain):
    run, cfg, _ = chain
    run()
    plan = build_plan(str(cfg))
    s = plan.stages["b"]
    assert s.out_dir.name == f"b-{s.fingerprint}"
    done = json.loads((s.out_dir / DONE_FILE).read_text())
    assert done["fingerprint"] == s.fingerprint and done["summary"]["total"] == 11
    assert "value: 10" in (s.out_dir / "config.yaml").read_text()


def test_two_runners_cannot_share_a_stage_dir(chain):
    run, cfg, _ = chain
    plan = build_plan(str(cfg))
    with StageLock(plan.stages["a"].out_dir):
        with pytest.raises(RuntimeError, match="another run .* is working in this stage directory"):
            run()


def test_killed_before_done_leaves_nothing_finished_and_rerun_completes(chain):
    _, cfg, _ = chain
    proc = pipeline(str(cfg), env={"MARCO_FAULT": "b:before_done", "WANDB_MODE": "disabled"}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    plan = build_plan(str(cfg))
    assert plan.stages["a"].done and not plan.stages["b"].done and not plan.stages["c"].done
    assert (plan.stages["b"].out_dir / "artifact.txt").exists()  # it got that far
    proc = pipeline(str(cfg), env={"WANDB_MODE": "disabled"})
    assert all(s.done for s in build_plan(str(cfg)).stages.values())
    assert "a              probe_stages.probe" in proc.stdout and "cached" in proc.stdout
