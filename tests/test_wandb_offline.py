"""What W&B shows, read back from the offline run files the real library wrote (WANDB_MODE=offline) for the whole
tiny DAG (tests/configs/tiny_dag.yaml): keys under the stage kind and one name per value, fingerprint and seed in
name, config and tags, numeric tables, a rendered tree page, and artifacts whose lineage is the DAG."""

import json
import re
from collections import Counter

import pytest

from conftest import pipeline
from marco_train import report
from marco_train.pipeline import DONE_FILE, build_plan
from marco_train.report import CSV_METRICS
from test_console import OURS
from wandb_files import stage_runs, table

CONFIG = "tests/configs/tiny_dag.yaml"
PREFIX = {"bootstrap": "bootstrap", "mcts": "mcts", "split": "split", "sft": "sft", "dpo": "dpo", "eval": "eval"}


@pytest.fixture(scope="module")
def tiny_dag(tmp_path_factory):
    runs = tmp_path_factory.mktemp("wandb") / "runs"
    proc = pipeline(CONFIG, f"runs_dir={runs}", env={"WANDB_MODE": "offline"})
    plan = build_plan(CONFIG, [f"runs_dir={runs}"])
    return plan, proc


def own_keys(keys):
    return {k for k in keys if not k.startswith("_") and not k.startswith("_wandb")}


@pytest.mark.slow
def test_every_key_is_under_its_stage_kind_and_no_value_has_two_names(tiny_dag):
    plan, _ = tiny_dag
    seen_kinds = set()
    for s in plan.stages.values():
        (run,) = stage_runs(s.out_dir)
        prefix = PREFIX[s.kind] + "/"
        keys = own_keys(run.history_keys) | own_keys(run.summary_keys)
        assert keys and all(k.startswith(prefix) for k in keys), (s.name, sorted(keys))
        # one name per value: no flattened summary (`metrics.accuracy` beside `eval/accuracy`, `pairs.kept`), no key
        # twice (`nodes` beside `mcts/nodes`)
        assert not [k for k in keys if "." in k] and not [k for k in keys if prefix + k in keys], sorted(keys)
        seen_kinds.add(s.kind)
        if s.kind in ("sft", "dpo"):
            assert {prefix + "loss", prefix + "learning_rate", prefix + "grad_norm"} <= run.history_keys
            assert "loss" not in run.history_keys and "learning_rate" not in run.history_keys
        if s.kind == "mcts":
            summary = json.loads((s.out_dir / "summary.json").read_text())
            assert "mcts/nodes" in run.history_keys and "nodes" not in run.summary_keys | run.history_keys
            assert summary["nodes"] > 0
        if s.kind == "eval":
            assert "eval/accuracy" in run.history_keys and not any(k.startswith("metrics") for k in keys)
    assert seen_kinds == set(PREFIX)


@pytest.mark.slow
def test_run_name_config_and_tags_carry_fingerprint_and_seed(tiny_dag):
    plan, _ = tiny_dag
    for s in plan.stages.values():
        (run,) = stage_runs(s.out_dir)
        assert run.name == f"{s.name}-{s.fingerprint}" and run.job_type == s.kind
        assert run.config["fingerprint"] == s.fingerprint and run.config["seed"] == 0
        assert run.config["stage"] == s.name and run.config["kind"] == s.kind
        assert set(run.tags) == {s.kind, f"fingerprint:{s.fingerprint}", "seed:0"}


@pytest.mark.slow
def test_result_and_sample_tables_have_numeric_cells(tiny_dag):
    plan, _ = tiny_dag
    (results_run,) = stage_runs(plan.experiment_dir / "_results")
    assert results_run.job_type == "results"
    t = table(results_run, "results/table")
    assert t["columns"] == ["variant", "task", *CSV_METRICS]
    written = json.loads((plan.experiment_dir / "results.json").read_text())
    assert [row[:2] for row in t["data"]] == [["base", "toy"], ["DPO", "toy"]]
    for row, full in zip(t["data"], written):
        assert row[2:] == [full[k] for k in CSV_METRICS]  # the same numbers, as numbers
        assert all(isinstance(v, (int, float)) for v in row[2:] if v is not None)
    assert (plan.experiment_dir / "results.md").read_text().splitlines()[2] == "| variant | toy |"

    eval_dpo = plan.stages["eval_dpo"]
    (run,) = stage_runs(eval_dpo.out_dir)
    samples = [json.loads(line) for line in (eval_dpo.out_dir / "samples.jsonl").read_text().splitlines()]
    t = table(run, "eval/samples")
    assert len(t["data"]) == 3  # wandb_samples: 3 of the 4 samples
    assert [r[t["columns"].index("id")] for r in t["data"]] == [s["id"] for s in samples[:3]]
    assert [r[t["columns"].index("correct")] for r in t["data"]] == [s["correct"] for s in samples[:3]]
    assert all(isinstance(r[t["columns"].index("response_tokens")], int) for r in t["data"])
    (base_run,) = stage_runs(plan.stages["eval_base"].out_dir)
    assert len(table(base_run, "eval/samples")["data"]) == 4


@pytest.mark.slow
def test_the_mcts_run_holds_a_rendered_tree_page_without_external_urls(tiny_dag):
    plan, _ = tiny_dag
    (run,) = stage_runs(plan.stages["mcts"].out_dir)
    assert "mcts/trees" in run.history_keys
    (page,) = (run.path.parent / "files" / "media" / "html" / "mcts").glob("trees_*.html")
    text = page.read_text()
    assert text.count('<section class="tree"') == 3 and not re.search(r"(src|href)=|https?:", text)


@pytest.mark.slow
def test_artifacts_by_reference_and_their_lineage_is_the_dag(tiny_dag):
    plan, _ = tiny_dag
    made = {}
    for s in plan.stages.values():
        (run,) = stage_runs(s.out_dir)
        (artifact,) = run.logged if s.kind != "eval" else [a for a in run.logged if a["type"] == "eval"]
        assert artifact["name"] == f"tiny_dag-{s.name}" and artifact["metadata"]["fingerprint"] == s.fingerprint
        # by reference: file:// paths into the stage directory, nothing copied
        assert artifact["refs"] and all(ref.startswith(f"file://{s.out_dir.resolve()}/") for ref in
                                        artifact["refs"].values())
        made[s.name] = artifact
    for s in plan.stages.values():
        (run,) = stage_runs(s.out_dir)
        used = {a["name"]: a["digest"] for a in run.used}
        assert used == {f"tiny_dag-{u}": made[u]["digest"] for u in s.inputs.values()}, s.name
    expected = {"mcts": {"bootstrap"}, "split": {"mcts", "bootstrap"}, "sft": {"split", "bootstrap"},
                "dpo": {"split", "sft"}, "eval_base": {"bootstrap"}, "eval_dpo": {"dpo"}, "bootstrap": set()}
    assert {s.name: set(s.inputs.values()) for s in plan.stages.values()} == expected
    (results_run,) = stage_runs(plan.experiment_dir / "_results")
    assert {a["name"] for a in results_run.used} == {"tiny_dag-eval_base", "tiny_dag-eval_dpo"}
    assert all(json.loads((s.out_dir / DONE_FILE).read_text())["wandb_run_id"] for s in plan.stages.values())


@pytest.mark.slow
def test_the_end_of_an_offline_run_prints_the_wandb_sync_command(tiny_dag):
    plan, proc = tiny_dag
    (line,) = [x for x in proc.stdout.splitlines() if "wandb sync" in x]
    assert line.endswith(f"upload them with: wandb sync {plan.experiment_dir}/*/wandb/offline-run-*")
    assert "(8 run directories)" in line  # 7 stages + the results table's run


def is_report(line: str) -> bool:
    """The result table and its notes (marco_train/report.py), printed after the stages."""
    return not line.strip() or line.startswith(("|", report.TABLE_TITLE, report.DIFF_TITLE, "(no-answer among",
                                                "bootstrap: "))


@pytest.mark.slow
def test_the_console_is_our_own_lines(tiny_dag):
    _, proc = tiny_dag
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    ours = [x for x in lines if OURS.match(x) or is_report(x)]
    library = Counter(x for x in lines if x not in ours)
    assert "\r" not in proc.stdout + proc.stderr  # no redrawn bars
    assert len(ours) > len(lines) / 2 and all(n == 1 for n in library.values()), library
    assert not proc.stderr.strip(), proc.stderr  # at this size: no library line at all
