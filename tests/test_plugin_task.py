"""A task from the user's own module (`task: mylab_tasks.lenient`, a temporary module on PYTHONPATH) goes through
the search, the split, SFT and the eval; its source is part of the fingerprint of every stage that names it."""

import json
import os

import pytest

from conftest import pipeline
from marco_train.config import ConfigError
from marco_train.fingerprint import changes
from marco_train.pipeline import build_plan

PLUGIN = '''"""Toy arithmetic where an answer one off the reference also counts."""
from marco_train.tasks.toy import ToyTask


class Lenient(ToyTask):
    name = "lenient"

    def is_correct(self, predicted, reference):
        return predicted is not None and abs(int(predicted) - int(reference)) <= {tolerance}


TASK = Lenient()
'''
CONFIG = """experiment: plugin
runs_dir: {runs}
wandb: {{mode: disabled}}
stages:
  bootstrap: {{kind: bootstrap}}
  mcts:
    kind: mcts
    inputs: {{model: bootstrap}}
    task: mylab_tasks.lenient
    num_problems: 4
    max_depth: 12
    stop_correct: 2
    min_iterations: 6
    min_correct: 1
    max_iterations: 10
  split: {{kind: split, inputs: {{trees: mcts, model: bootstrap}}, task: mylab_tasks.lenient, process_check: false}}
  sft:
    kind: sft
    inputs: {{data: split, model: bootstrap}}
    training: {{global_batch_size: 2, per_device_batch_size: 2, learning_rate: 1.0e-4, max_steps: 2, max_length: 512}}
  eval_lenient: {{kind: eval, inputs: {{model: sft}}, task: mylab_tasks.lenient, num_problems: 12}}
  eval_toy: {{kind: eval, inputs: {{model: sft}}, task: toy, num_problems: 12}}
"""


@pytest.fixture(autouse=True)
def _forget_the_plugin(monkeypatch):
    """Each test's plug-in lives in its own tmp_path: no module of another test's copy stays imported."""
    import sys

    for name in [m for m in sys.modules if m.split(".")[0] == "mylab_tasks"]:
        monkeypatch.delitem(sys.modules, name)


def write_plugin(root, tolerance: int = 1):
    (root / "mylab_tasks").mkdir(exist_ok=True)
    (root / "mylab_tasks" / "__init__.py").write_text("")
    (root / "mylab_tasks" / "lenient.py").write_text(PLUGIN.format(tolerance=tolerance))


@pytest.mark.slow
def test_a_plugin_task_trains_and_evaluates(tmp_path, monkeypatch):
    write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "plugin.yaml"
    config.write_text(CONFIG.format(runs=tmp_path / "runs"))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    pipeline(str(config), env=env)
    plan = build_plan(str(config))
    trees = [json.loads(x) for x in (plan.stages["mcts"].out_dir / "trees" / "rank-00000.jsonl").read_text()
             .splitlines()]
    assert {t["task"] for t in trees} == {"mylab_tasks.lenient"} and len(trees) == 4
    # the search scored with the plug-in's rule: a terminal one off the reference is correct
    terminals = [(n["answer"], t["answer"], n["correct"]) for t in trees for n in t["nodes"] if n["is_terminal"]
                 and n["answer"] is not None]
    assert terminals and all(c == (abs(int(a) - int(ref)) <= 1) for a, ref, c in terminals)
    assert any(c and a != ref for a, ref, c in terminals)  # at least one lenient win (there are 6 here)
    assert json.loads((plan.stages["split"].out_dir / "summary.json").read_text())["task"] == "mylab_tasks.lenient"
    assert json.loads((plan.stages["sft"].out_dir / "_DONE.json").read_text())["summary"]["steps"] == 2

    samples = {name: [json.loads(x) for x in (plan.stages[name].out_dir / "samples.jsonl").read_text().splitlines()]
               for name in ("eval_lenient", "eval_toy")}
    assert [s["response"] for s in samples["eval_lenient"]] == [s["response"] for s in samples["eval_toy"]]
    lenient = [s["predicted"] is not None and abs(int(s["predicted"]) - int(s["reference"])) <= 1
               for s in samples["eval_toy"]]
    metrics = {n: json.loads((plan.stages[n].out_dir / "metrics.json").read_text()) for n in samples}
    assert metrics["eval_lenient"]["accuracy"] == sum(lenient) / 12
    assert metrics["eval_toy"]["accuracy"] == sum(s["correct"] for s in samples["eval_toy"]) / 12
    assert metrics["eval_lenient"]["accuracy"] > metrics["eval_toy"]["accuracy"]


def test_the_plugin_source_is_in_the_fingerprint_and_a_missing_one_is_named(tmp_path, monkeypatch):
    write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "plugin.yaml"
    config.write_text(CONFIG.format(runs=tmp_path / "runs"))
    old = build_plan(str(config))
    before = {n: s.fingerprint for n, s in old.stages.items()}
    write_plugin(tmp_path, tolerance=2)
    plan = build_plan(str(config))
    changed = sorted(n for n, s in plan.stages.items() if s.fingerprint != before[n])
    # the stages naming the plug-in, and what reads their outputs
    assert changed == ["eval_lenient", "eval_toy", "mcts", "sft", "split"]
    code = {n: plan.stages[n].fingerprint_inputs["code"] for n in ("mcts", "split", "eval_toy")}
    assert code["mcts"]["mylab_tasks.lenient"] == code["split"]["mylab_tasks.lenient"]
    assert "mylab_tasks.lenient" not in code["eval_toy"]  # eval_toy re-runs only because its model did
    assert changes(old.stages["mcts"].fingerprint_inputs, plan.stages["mcts"].fingerprint_inputs, {}) == \
        ["code of mylab_tasks.lenient changed"]

    with pytest.raises(ConfigError, match=r"stages\.eval_toy\.task: task module 'mylab_tasks\.nothere' is not "
                                          r"importable \(No module named 'mylab_tasks\.nothere'\); check PYTHONPATH"):
        build_plan(str(config), ["stages.eval_toy.task=mylab_tasks.nothere"])
    (tmp_path / "mylab_tasks" / "empty.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match=r"task module 'mylab_tasks\.empty' defines no TASK, an instance of a "
                                          r"marco_train\.tasks\.base\.Task subclass \(has: nothing\)"):
        build_plan(str(config), ["stages.eval_toy.task=mylab_tasks.empty"])
