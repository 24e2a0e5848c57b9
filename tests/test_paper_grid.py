"""configs/ablations/paper.yaml, planned only (no stage runs): each progressive row changes exactly the keys the
paper's row names, one search and one SFT serve every DPO row, the alpha sweep's 0 and 1 rows are the +cDPO and
+joint stages, no DPO computation appears twice, and the authors' search preset plans (--dry-run)."""

from conftest import PYTHON, run
from marco_train.eval.tables import table_specs
from marco_train.pipeline import build_plan, equivalent_stages

CONFIG = "configs/ablations/paper.yaml"

# Written by hand from the paper (Table 5): the row, the row before it, and the keys that differ between
# them — the dpo stage's own keys, and its data split's keys as `split.<key>`.
ONE_CHANGE = [
    ("+data balance", "dpo_balance", "dpo_plain", {"split.chosen"}),
    ("+cDPO", "dpo_cdpo", "dpo_balance", {"epsilon"}),
    ("+joint loss", "dpo_joint", "dpo_cdpo", {"alpha"}),
    ("+masking", "dpo_masked", "dpo_joint", {"mask_prefix", "mask_sft_prefix"}),
]


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def effective(plan, name):
    """A dpo stage's config (its inputs resolved): its own keys, its split's as split.*, its start model."""
    s = plan.stages[name]
    own = {k: v for k, v in flat(s.fingerprint_inputs["config"]).items() if not k.startswith("inputs.")}
    split = plan.stages[s.inputs["data"]].fingerprint_inputs["config"]
    own.update({f"split.{k}": v for k, v in flat(split).items() if not k.startswith("inputs.")})
    own["model"] = s.inputs["model"]
    return own


def differing(a: dict, b: dict) -> set:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_each_progressive_row_changes_exactly_the_papers_keys(tmp_path):
    plan = build_plan(CONFIG, [f"runs_dir={tmp_path}"])
    for label, row, before, keys in ONE_CHANGE:
        assert differing(effective(plan, row), effective(plan, before)) == keys, label
    rows = {r.label: r.eval for r in table_specs(plan)["progressive"].rows}
    models = {label: plan.stages[e].inputs["model"] for label, e in rows.items()}
    assert [models[label] for label, *_ in ONE_CHANGE] == [row for _, row, _, _ in ONE_CHANGE]
    assert models["+DPO"] == "dpo_plain" and models["SFT"] == "sft"
    plain = effective(plan, "dpo_plain")
    loss = (plain["epsilon"], plain["alpha"], plain["mask_prefix"], plain["mask_sft_prefix"])
    assert loss == (0.0, 0.0, False, False)
    assert plain["split.chosen"] == "random"


def test_one_search_one_sft_and_the_sweeps_share_the_cdpo_and_joint_stages(tmp_path):
    plan = build_plan(CONFIG, [f"runs_dir={tmp_path}"])
    kinds = [s.kind for s in plan.stages.values()]
    assert kinds.count("mcts") == 1
    dpo = [s for s in plan.stages.values() if s.kind == "dpo"]
    assert {s.inputs["model"] for s in dpo} == {"sft"}  # one SFT starts every DPO row
    assert {plan.stages[s.inputs["data"]].cfg.rejected for s in dpo} == {"shortest_prefix"}
    sft_stages = [s for s in plan.stages.values() if s.kind == "sft"]
    assert sorted(s.name for s in sft_stages) == ["sft", "sft_all", "sft_longest", "sft_medium", "sft_shortest"]
    assert {plan.stages[s.inputs["data"]].inputs["trees"] for s in sft_stages} == {"mcts"}
    specs = table_specs(plan)
    alpha = {r.label: plan.stages[r.eval].inputs["model"] for r in specs["alpha"].rows}
    assert alpha["alpha 0 (= +cDPO)"] == "dpo_cdpo" and alpha["alpha 1.0 (= +joint loss)"] == "dpo_joint"
    progressive = {r.label: r.eval for r in specs["progressive"].rows}
    assert {r.label: r.eval for r in specs["alpha"].rows}["alpha 0 (= +cDPO)"] == progressive["+cDPO"]
    masked = {r.label: plan.stages[r.eval].inputs["model"] for r in specs["alpha_masked"].rows}
    assert masked["alpha 0 (= +cDPO)"] == "dpo_cdpo" and masked["masked alpha 1.0 (= +masking)"] == "dpo_masked"
    unmasked = [plan.stages[s].cfg for s in ("dpo_cdpo", "dpo_a05", "dpo_joint", "dpo_a15", "dpo_a20")]
    assert [c.alpha for c in unmasked] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert not any(c.mask_prefix or c.mask_sft_prefix for c in unmasked)  # the paper's sweep: unmasked
    assert equivalent_stages(plan) == []  # every distinct computation once
    assert all(r.ours for r in specs["alpha_masked"].rows) and not any(r.ours for r in specs["alpha"].rows)
    mean = plan.stages["dpo_mean"].cfg
    assert (mean.logp_reduction, mean.beta_scale, mean.mask_prefix) == ("mean", "mean_scored_tokens", True)
    best = {r.label: r.eval for r in specs["test_at"].rows}
    assert plan.stages[best["best + MCTS decoding"]].cfg.decoding == "mcts"
    assert {plan.stages[e].inputs["model"] for e in list(best.values())[1:]} == {"dpo_masked"}  # fixed in advance


def test_the_authors_preset_plans_with_dry_run(tmp_path):
    proc = run([PYTHON, "launchers/pipeline.py", "--config", "tests/configs/authors_preset.yaml", "--dry-run",
                f"runs_dir={tmp_path}"])
    assert "mcts" in proc.stderr + proc.stdout
    plan = build_plan("tests/configs/authors_preset.yaml", [f"runs_dir={tmp_path}"])
    cfg = plan.stages["mcts"].cfg
    assert (cfg.temperature, cfg.top_p, cfg.max_node_tokens) == (0.7, 0.9, 512)
    assert {t for t, spec in cfg.node_types.items() if spec.special} == {"double_check", "thinking_from_scratch"}
    assert cfg.node_types.sub_task.prefills[0] == "Firstly, I need to break down this task.\n- 1."
    assert cfg.node_types.reflection.prefills[1] == "Halt! I made a fatal mistake that made me rethink\n</reflection>"
    assert sorted(cfg.transition_patterns) == ["decompose", "direct", "hypothesis", "reclarify"]


def test_beta_rescaled_by_the_mean_scored_tokens_of_the_pairs(tmp_path):
    import pytest

    from marco_train.config import ConfigError
    from marco_train.stages.dpo import mean_scored_tokens

    pairs = [{"prefix_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6, 7, 8, 9]},
             {"prefix_ids": [], "chosen_ids": [4], "rejected_ids": [5, 6, 7]}]
    assert mean_scored_tokens(pairs, mask_prefix=True) == (2 + 4 + 1 + 3) / 4  # suffixes only
    assert mean_scored_tokens(pairs, mask_prefix=False) == (5 + 7 + 1 + 3) / 4  # each with its shared prefix
    with pytest.raises(ConfigError, match="stages.dpo_mean.beta_scale=mean_scored_tokens rescales"):
        build_plan(CONFIG, [f"runs_dir={tmp_path}", "stages.dpo_mean.logp_reduction=sum"])


def test_an_empty_sft_set_is_an_error_that_says_why(tmp_path):
    import pytest

    from marco_train.data.schema import SFT_COLUMNS, load_sft, save_rows
    from marco_train.io import DataError

    save_rows([], SFT_COLUMNS, tmp_path / "sft")  # e.g. a tercile no query has a path in
    with pytest.raises(DataError, match=r"sft: the sft set has no rows \(the split stage .* summary.json\)"):
        load_sft(tmp_path / "sft")
