"""Errors a user can fix are one line (`error: <what is wrong>; <what to do>`, exit 2) and come before any work:
problem files checked when read (file:line), unknown tasks and missing files at plan time, offline hub models and
datasets, data/file/OS errors at the command line (--traceback or MARCO_TRACEBACK=1 shows the rest), overrides
after flags. Each case states what happened before (issue 16)."""

import json
import re

import pytest

from conftest import PYTHON, run
from marco_train.cli import pipeline_main
from marco_train.io import DataError
from marco_train.tasks import get_task

GOOD = '{"id": "a", "question": "Compute 1 + 2.", "answer": "3"}\n'
TOY_MODEL = "marco_train/toy/checkpoint"


def cli(capsys, *argv):
    """(exit code, stderr) of the pipeline command line run in this process; it must fail."""
    with pytest.raises(SystemExit) as e:
        pipeline_main(["--config", *argv])
    return e.value.code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The error, when it is all stderr says (errors before any work)."""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):-1]


def last_line(err: str) -> str:
    """The error a stage raised while running: the one `error:` line, last (after its progress bars and logs)."""
    lines = [x for x in re.split(r"[\r\n]", err) if x.strip()]
    assert lines[-1].startswith("error: ") and sum(x.startswith("error: ") for x in lines) == 1, err
    return lines[-1][len("error: "):]


def write_problems(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_byte_that_is_not_utf8_is_named_by_file_and_line(tmp_path, capsys):
    """Before: a bare UnicodeDecodeError naming no file, after the stage directory was made."""
    path = write_problems(tmp_path, "latin1.jsonl", GOOD.encode() + '{"id": "b", "question": "Compute 5 − 2.", '
                          '"answer": "3"}\n'.encode("utf-8").replace("−".encode(), b"\x96"))
    code, err = cli(capsys, "configs/demo.yaml", f"runs_dir={tmp_path / 'runs'}", f"stages.mcts.problems_file={path}")
    assert code == 2 and one_line(err) == (
        f"command-line override 'stages.mcts.problems_file={path}': stages.mcts.problems_file: {path}:2: not UTF-8 "
        f"text (byte 0x96 at column 36); re-save the file as UTF-8")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DataError, match=rf"^{path}:2: not UTF-8 text"):  # the reader a stage uses, when it runs
        get_task("toy").load_problems(str(path))
    gsm8k_format = write_problems(tmp_path, "gsm8k.jsonl", b'{"question": "q", "answer": "x\\n#### 4"}\n'
                                  b'{"question": "\xff", "answer": "#### 5"}\n')
    with pytest.raises(DataError, match=rf"^{gsm8k_format}:2: not UTF-8 text"):  # a dataset-format file too
        get_task("gsm8k").load_problems(str(gsm8k_format))


def test_an_answer_the_task_cannot_read_is_named_by_file_and_line_before_any_model(tmp_path, capsys):
    """Before: int('three') failed mid-search, after the model had loaded, losing the trees in flight."""
    path = write_problems(tmp_path, "words.jsonl", (GOOD + '{"id": "b", "question": "Compute 1 + 2.", '
                                                           '"answer": "three"}\n').encode())
    code, err = cli(capsys, "configs/demo.yaml", f"runs_dir={tmp_path / 'runs'}", f"stages.mcts.problems_file={path}")
    assert code == 2 and one_line(err).endswith(
        f"stages.mcts.problems_file: {path}:2: problem 'b': answer 'three' is not an integer (the toy task's answers "
        f"are); fix the answer or the task")
    assert not (tmp_path / "runs").exists()
    for task, why in [("toy", "is not an integer"), ("gsm8k", "is not a number"), ("aime", "is not an integer 0..999")]:
        with pytest.raises(DataError, match=rf"^{path}:2: problem 'b': answer 'three' {why}"):
            get_task(task).load_problems(str(path))


def long_problem_config(tmp_path, stage: str) -> str:
    """One stage on the toy model (512 positions) whose second problem's prompt is longer than that."""
    long_question = "Compute 1" + " + 1" * 400 + "."
    problems = write_problems(tmp_path, "long.jsonl", (GOOD + json.dumps(
        {"id": "toy-long", "question": long_question, "answer": "401"}) + "\n").encode())
    stages = {"mcts": {"kind": "mcts", "max_iterations": 2, "min_iterations": 1, "stop_correct": 1},
              "eval": {"kind": "eval", "num_problems": 0}}[stage]
    stages.update(model={"name_or_path": TOY_MODEL}, problems_file=str(problems))
    config = {"experiment": "long", "runs_dir": str(tmp_path / "runs"), "wandb": {"mode": "disabled"},
              "stages": {stage: stages}}
    path = tmp_path / f"{stage}.yaml"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("stage", ["mcts", "eval"])
def test_a_prompt_longer_than_the_models_positions_is_named_by_problem_before_generation(tmp_path, capsys,
                                                                                         monkeypatch, stage):
    """Before: the search grew to 3.5 GB of RAM, then failed naming no problem."""
    from marco_train.engines.hf_engine import HFEngine

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started before the prompts were checked")

    monkeypatch.setattr(HFEngine, "add_request", no_generation)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = long_problem_config(tmp_path, stage)
    code, err = cli(capsys, config)
    problems = tmp_path / "long.jsonl"
    assert code == 2 and last_line(err).startswith(f"{problems}: problem 'toy-long': its prompt is 1220 tokens")
    assert last_line(err).endswith("tokens, and the model (" + ("policy" if stage == "mcts" else "hf") + ") has 512 "
                                  "positions; shorten or drop the problem, or use a model with more positions")


def test_an_unknown_task_or_a_missing_problem_file_fails_at_plan_time(tmp_path, capsys):
    """Before: --dry-run passed, and the run crashed after creating the stage directory."""
    runs = f"runs_dir={tmp_path / 'runs'}"
    code, err = cli(capsys, "configs/demo.yaml", runs, "stages.eval_base.task=gsm9k")
    assert code == 2 and one_line(err) == (
        "command-line override 'stages.eval_base.task=gsm9k': stages.eval_base.task: unknown task 'gsm9k' (known: "
        "toy, gsm8k, math500, aime, blocksworld, multi_if, or your own module by its dotted name)")
    code, err = cli(capsys, "configs/demo.yaml", "--dry-run", runs, "stages.mcts.problems_file=mcts_data/toy.jsonl")
    assert code == 2 and one_line(err) == (
        "command-line override 'stages.mcts.problems_file=mcts_data/toy.jsonl': stages.mcts.problems_file: problem "
        "file 'mcts_data/toy.jsonl' not found (relative paths start where you run; bundled files are in "
        "mcts_data/problems/)")
    assert not (tmp_path / "runs").exists()


def test_offline_a_hub_model_or_dataset_not_in_the_cache_is_one_line(tmp_path):
    """Before: 20 lines of transformers traceback (or datasets' "Couldn't reach ... (OfflineModeIsEnabled)")."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    model = run([PYTHON, "launchers/pipeline.py", "--config", "configs/demo.yaml", "--dry-run",
                 "stages.eval_base.model.name_or_path=Qwen/Qwen2.5-1.5B-Instruct"], env=env, check=False)
    assert model.returncode == 2 and one_line(model.stderr).endswith(
        f"stages.eval_base.model.name_or_path: model 'Qwen/Qwen2.5-1.5B-Instruct' is not in the local Hugging Face "
        f"cache ({tmp_path / 'hf' / 'hub'}) and the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE); download it "
        f"where there is network (`hf download Qwen/Qwen2.5-1.5B-Instruct`) or point model.name_or_path at a local "
        f"copy")
    data = run([PYTHON, "launchers/pipeline.py", "--config", "configs/demo.yaml", "--dry-run",
                "stages.eval_base.task=gsm8k", "stages.eval_base.problems_file=openai/gsm8k:main"],
               env=env, check=False)
    hf = tmp_path / "hf"
    assert data.returncode == 2 and one_line(data.stderr).endswith(
        f"stages.eval_base.problems_file: dataset 'openai/gsm8k' is not in the local cache ({hf / 'datasets'} or "
        f"{hf / 'hub'}) and the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); download it "
        f"where there is network (`hf download --repo-type dataset openai/gsm8k`) or point problems_file at a local "
        f"file")


def test_file_and_os_errors_are_one_line_and_traceback_shows_the_rest(tmp_path, capsys, monkeypatch):
    """Before: a Python traceback for everything but config errors."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["configs/demo.yaml", "--until", "bootstrap", f"runs_dir={blocker / 'runs'}"]
    code, err = cli(capsys, *argv)
    assert code == 2 and last_line(err).endswith(": Not a directory (check the path, its permissions and free disk "
                                                "space)")
    with pytest.raises(NotADirectoryError):
        pipeline_main(["--config", *argv, "--traceback"])
    monkeypatch.setenv("MARCO_TRACEBACK", "1")
    with pytest.raises(NotADirectoryError):
        pipeline_main(["--config", *argv])


def test_overrides_may_follow_flags(tmp_path, capsys):
    """Before: `--until sft key=value` was rejected ("unrecognized arguments")."""
    pipeline_main(["--config", "configs/demo.yaml", "--dry-run", "--until", "sft", f"runs_dir={tmp_path}",
                   "stages.sft.training.learning_rate=1e-3"])
    planned = [line.split("[dry-run] ", 1)[1].split()[0] for line in capsys.readouterr().out.splitlines()
               if "[dry-run]" in line]
    assert planned == ["bootstrap", "mcts", "split", "sft"]
