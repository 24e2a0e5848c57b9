"""Config validation: unknown keys, wrong types, missing values and bad graphs fail up front, naming key and file."""

import pytest

from marco_train.config import ConfigError
from marco_train.pipeline import build_plan


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


BASE = "experiment: t\nstages:\n  a:\n    kind: probe_stages.probe\n    value: 3\n"


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, BASE + "    valeu: 4\n")
    with pytest.raises(ConfigError) as e:
        build_plan(path)
    assert f"{path}:6: unknown key 'stages.a.valeu'" in str(e.value)
    assert "value" in str(e.value)  # the known keys are listed


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "experimnt: t\n" + BASE.split("\n", 1)[1])
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: unknown key 'experimnt'"):
        build_plan(path)


def test_wrong_type_names_the_override(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'stages.a.value=many': bad value for 'stages.a.value'"):
        build_plan(write(tmp_path, BASE), ["stages.a.value=many"])


def test_misspelled_override(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'stages.a.vlue'"):
        build_plan(write(tmp_path, BASE), ["stages.a.vlue=2"])


def test_missing_value(tmp_path):
    with pytest.raises(ConfigError, match=r"missing value for 'experiment'"):
        build_plan(write(tmp_path, BASE.split("\n", 1)[1]))


def test_unknown_kind_and_input_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml:4: unknown stage kind 'dpoo'"):
        build_plan(write(tmp_path, "experiment: t\nstages:\n  a:\n    kind: dpoo\n"))
    with pytest.raises(ConfigError, match=r"inputs.x names unknown stage 'nope'"):
        build_plan(write(tmp_path, BASE + "    inputs: {x: nope}\n"))
    cyc = ("experiment: t\nstages:\n  a:\n    kind: probe_stages.probe\n    inputs: {x: b}\n"
           "  b:\n    kind: probe_stages.probe\n    inputs: {x: a}\n")
    with pytest.raises(ConfigError, match="cycle"):
        build_plan(write(tmp_path, cyc))


def test_bad_yaml_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml:3: not valid YAML"):
        build_plan(write(tmp_path, "experiment: t\nrunsdir: x\nstages: {a: [}\n"))
    with pytest.raises(ConfigError, match="expected key=value"):
        build_plan(write(tmp_path, BASE), ["stages.a.value"])


def test_demo_config_is_valid():
    plan = build_plan("configs/demo.yaml")
    assert list(plan.stages)[0] == "bootstrap"
    assert all(s.fingerprint for s in plan.stages.values())


def test_cross_key_rule_fails_at_plan_time():
    with pytest.raises(ConfigError, match=r"stages.eval_base.test_at.*Test@8 needs samples_per_problem >= 8"):
        build_plan("configs/demo.yaml", ["stages.eval_base.samples_per_problem=4", "stages.eval_base.test_at=[1,8]"])


# ------------------------------------------------------------------ issue 16: errors before any work, naming the key


def test_negative_sizes_are_refused_at_plan_time_naming_the_key():
    """Before: eval num_problems=-495 evaluated 5 problems (a Python slice) and exited 0; mcts -30 searched 1,970."""
    for override, message in [
            ("stages.eval_base.num_problems=-495", "stages.eval_base.num_problems=-495: must be >= 0 (0 = all)"),
            ("stages.mcts.num_problems=-30", "stages.mcts.num_problems=-30: must be >= 0 (0 = all)"),
            ("stages.split.max_length=-1", "stages.split.max_length=-1: must be >= 0"),
            ("stages.sft.max_samples=-2", "stages.sft.max_samples=-2: must be >= 0 (0 = the whole SFT set)"),
            ("stages.eval_base.max_new_tokens=-1",
             "stages.eval_base.max_new_tokens=-1: must be >= 0 (0 = the task's budget, Task.max_new_tokens)"),
            ("stages.eval_base.test_at=[1,-4]", "stages.eval_base.test_at=-4: must be >= 1"),
            ("stages.mcts.node_types.thinking.max_tokens=-3",
             "stages.mcts.node_types.thinking.max_tokens=-3: must be >= 0 (0 = the stage's max_node_tokens)"),
            ("stages.mcts.node_types.thinking.children.double_check=-2",
             "stages.mcts.node_types.thinking.children.double_check=-2: must be >= 0")]:
        with pytest.raises(ConfigError) as e:
            build_plan("configs/demo.yaml", [override])
        assert str(e.value) == f"command-line override '{override}': {message}"


def test_batch_sizes_and_their_split_over_the_world_are_checked_at_plan_time(tmp_path):
    """Before: 0 raised ZeroDivisionError inside both ranks after mcts and split had run; divisibility by the world
    size was checked only when sft started; eval batch_size 0 named no key."""
    cases = {"stages.sft.training.per_device_batch_size=0": "stages.sft.training.per_device_batch_size=0: must be >= 1",
             "stages.dpo.training.global_batch_size=0": "stages.dpo.training.global_batch_size=0: must be >= 1 (a "
                                                        "multiple of per_device_batch_size x world size)",
             "stages.eval_base.batch_size=0": "stages.eval_base.batch_size=0: must be >= 1"}
    for override, message in cases.items():
        with pytest.raises(ConfigError) as e:
            build_plan("configs/demo.yaml", [override])
        assert str(e.value) == f"command-line override '{override}': {message}"
    with pytest.raises(ConfigError) as e:  # 8 pairs per step on 2 nodes of 2 ranks with 4 each: 8 % 16
        build_plan("configs/demo.yaml", ["stages.dpo.nnodes=2"])
    assert str(e.value) == ("configs/demo.yaml:51: stages.dpo.training.global_batch_size=8 is not a multiple of "
                            "per_device_batch_size (4) x world size (4 = nproc_per_node 2 x nnodes 2); use a multiple "
                            "of 16 or change per_device_batch_size")
    build_plan("configs/demo.yaml", ["stages.dpo.nnodes=2", "stages.dpo.training.global_batch_size=16"])


def test_a_torchrun_world_other_than_the_configs_is_checked_before_the_stage_starts(monkeypatch, capsys, tmp_path):
    from marco_train.cli import stage_main

    monkeypatch.setenv("WORLD_SIZE", "3")  # as `torchrun --nproc_per_node=3 launchers/sft.py --config ...` sets it
    with pytest.raises(SystemExit) as e:
        stage_main("sft", ["--config", "configs/demo.yaml", f"runs_dir={tmp_path / 'runs'}"])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "error: configs/demo.yaml: stages.sft.training.global_batch_size=8 is not a multiple of per_device_batch_size "
        "(4) x world size (3 in this job); use a multiple of 12 or change per_device_batch_size\n")
    assert not (tmp_path / "runs").exists()


def test_unknown_nested_key_lists_its_own_section_and_the_nearest_name():
    """Before: stages.sft.training.learning_rte listed the sft stage's top-level keys."""
    with pytest.raises(ConfigError) as e:
        build_plan("configs/demo.yaml", ["stages.sft.training.learning_rte=1e-4"])
    assert str(e.value) == (
        "command-line override 'stages.sft.training.learning_rte=1e-4': unknown key 'stages.sft.training.learning_rte' "
        "for 'stages.sft.training' (its keys: global_batch_size, per_device_batch_size, learning_rate, max_steps, "
        "epochs, warmup_ratio, weight_decay, max_length, precision, gradient_checkpointing, save_steps, "
        "save_total_limit, keep_optimizer_state, deepspeed, extra_args); did you mean 'learning_rate'? fix the "
        "spelling or remove it")
    with pytest.raises(ConfigError, match=r"unknown key 'stages.mcts.node_types.thinking.chidren' for "
                                          r"'stages.mcts.node_types.thinking' \(its keys: children, prefills, "
                                          r"max_tokens, special\); did you mean 'children'\?"):
        build_plan("configs/demo.yaml", ["stages.mcts.node_types.thinking.chidren={thinking: 1}"])


def test_duplicate_keys_bad_overrides_and_a_preset_as_the_config(tmp_path):
    dup = write(tmp_path, BASE + "    value: 4\n")  # PyYAML alone keeps the last one silently
    with pytest.raises(ConfigError) as e:
        build_plan(dup)
    assert str(e.value) == f"{dup}:6: not valid YAML (duplicate key 'value' (first on line 5); keep one)"
    with pytest.raises(ConfigError) as e:  # before: AttributeError: 'int' object has no attribute 'items'
        build_plan("configs/demo.yaml", ["stages=5"])
    assert str(e.value) == ("command-line override 'stages=5': 'stages' must map stage names to their keys "
                            "(e.g. stages.dpo.beta=0.2), not 5")
    with pytest.raises(ConfigError) as e:  # before: yaml ParserError
        build_plan("configs/demo.yaml", ["x=[1,"])
    assert str(e.value) == ("command-line override 'x=[1,': the value is not valid YAML (did not find expected node "
                            "content); close the bracket or quote the value")
    with pytest.raises(ConfigError, match=r"^command-line override 'stages.sft=3': stage 'sft' must be a mapping"):
        build_plan("configs/demo.yaml", ["stages.sft=3"])
    preset = "configs/models/qwen2.5-1.5b.yaml"
    with pytest.raises(ConfigError) as e:  # before: "unknown key 'model' for the pipeline (top level)"
        build_plan(preset)
    assert str(e.value) == (f"{preset}: this is a model preset (keys model, training), not a pipeline config: add "
                            f"`include: {preset}` to a training stage of a pipeline config (e.g. configs/demo.yaml) "
                            f"and pass that to --config")
