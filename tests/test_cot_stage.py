"""The cot stage: tagged traces written from a task's known solutions, and the fine-tuning on them.

Trace texts are asserted exactly for hand-picked problems (worked out by hand below); every trace of the bundled
word problems passes the gsm8k step checker and scores right; the stage runs for real on the shipped toy model
(two optimizer steps, two dev problems); plan-time errors name the key.
"""

from __future__ import annotations

import json
import random

import pytest

from conftest import pipeline
from marco_train.config import ConfigError
from marco_train.engines.base import derive_seed
from marco_train.prompts import REFLECTION_TEXT, parse_response
from marco_train.tasks import get_task, load_problems_file
from marco_train.tasks.traces import MISTAKES

GSM8K = get_task("gsm8k")
IVAN = "Ivan has 15 books, buys 7 more, then gives 16 to Ben. How many books does Ivan have now?"
CONFIG = "tests/configs/cot_toy.yaml"


def test_a_word_problem_trace_is_its_worked_solution():
    assert GSM8K.write_trace(IVAN, random.Random(0), error_rate=0.0) == (
        "<sub_task>Firstly, I need to break down this task. There are 2 steps.</sub_task>\n"
        "<thinking>Ivan buys 7 more: 15 + 7 = 22</thinking>\n"
        "<thinking>Ivan gives 16 to Ben: 22 - 16 = 6</thinking>\n"
        "<double_check>Check: 22 - 16 = 6. Correct.</double_check>\n"
        "<answer>The answer is: 6</answer>")
    boxes = "A box holds 8 apples. How many boxes are needed for exactly 80 apples?"
    assert GSM8K.write_trace(boxes, random.Random(0), error_rate=0.0) == (
        "<sub_task>Firstly, I need to break down this task. There is 1 step.</sub_task>\n"
        "<thinking>80 apples in boxes of 8: 80 / 8 = 10</thinking>\n"
        "<double_check>Check: 80 / 8 = 10. Correct.</double_check>\n"
        "<answer>The answer is: 10</answer>")
    assert GSM8K.write_trace("Natalia sold clips to 48 of her friends. How many clips?", random.Random(0), 0.0) is None


def test_a_wrong_then_corrected_trace_catches_the_mistake_reflects_and_redoes_the_work():
    probe = random.Random(1)
    probe.random()  # the draw that decides to go wrong (always, at error_rate 1), then how far off:
    assert probe.choice(MISTAKES) == -3
    text = GSM8K.write_trace(IVAN, random.Random(1), error_rate=1.0)
    segments = parse_response(text)
    assert [(s.type, s.text) for s in segments] == [
        ("sub_task", "Firstly, I need to break down this task. There are 2 steps."),
        ("thinking", "Ivan buys 7 more: 15 + 7 = 22"),
        ("thinking", "Ivan gives 16 to Ben: 22 - 16 = 3"),  # 6 - 3
        ("double_check", "Check: 22 - 16 = 6, not 3. Wrong."),
        ("reflection", REFLECTION_TEXT),
        ("thinking_from_scratch", "Start again from the question."),
        ("thinking", "Ivan buys 7 more: 15 + 7 = 22"),
        ("thinking", "Ivan gives 16 to Ben: 22 - 16 = 6"),
        ("double_check", "Check: 22 - 16 = 6. Correct."),
        ("answer", "The answer is: 6")]
    assert all(s.closed for s in segments)
    assert GSM8K.check_steps(IVAN, text).ok and GSM8K.score(text, "6") == ("6", True)
    # the same trace without its caught mistake is a wrong process: the step checker sees the difference
    uncaught = text.replace("<double_check>Check: 22 - 16 = 6, not 3. Wrong.</double_check>\n", "")
    assert GSM8K.check_steps(IVAN, uncaught).reason == "uncaught_wrong_step"


def test_every_bundled_word_problem_trace_passes_the_step_checker_and_scores_right():
    rng = random.Random(0)
    for p in load_problems_file("mcts_data/problems/word_train.jsonl"):
        for error_rate in (0.0, 1.0):
            text = GSM8K.write_trace(p.question, rng, error_rate)
            assert GSM8K.check_steps(p.question, text).ok, text
            assert GSM8K.score(text, p.answer) == (p.answer, True)
            assert ("<reflection>" in text) == (error_rate == 1.0)


def test_the_toy_task_writes_the_bootstrap_traces():
    toy = get_task("toy")
    assert toy.write_trace("Compute 12 + 7 - 5.", random.Random(0), 0.0) == (
        "<sub_task>Firstly, I need to break down this task. There are 2 steps.</sub_task>\n"
        "<thinking>12 + 7 = 19</thinking>\n<thinking>19 - 5 = 14</thinking>\n"
        "<double_check>Check: 19 - 5 = 14. Correct.</double_check>\n<answer>The answer is: 14</answer>")
    assert not get_task("math500").can_write_traces and toy.can_write_traces and GSM8K.can_write_traces


@pytest.mark.parametrize("override, message", [
    ("stages.cot.task=math500", r"stages\.cot\.task: task 'math500' has no known solutions to write traces from "
                                r"\(Task\.solution_steps\); tasks that have them: toy, gsm8k"),
    ("stages.cot.error_rate=1.5", r"stages\.cot\.error_rate: 1\.5 is not in \[0, 1\]"),
    ("stages.cot.dev_problems=6", r"stages\.cot\.dev_problems=6 leaves no training problem of num_problems=6"),
    ("stages.cot.traces_per_problem=0", r"stages\.cot\.traces_per_problem"),
])
def test_plan_time_errors_name_the_key(override, message):
    from marco_train.pipeline import build_plan

    with pytest.raises(ConfigError, match=message):
        build_plan(CONFIG, [override])


def test_the_stage_writes_the_traces_fine_tunes_and_evaluates_the_dev_problems(tmp_path):
    pipeline(CONFIG, f"runs_dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})
    (out,) = (tmp_path / "cot_toy_test").glob("cot-*")
    problems = load_problems_file("mcts_data/problems/toy_train.jsonl", limit=6)
    rows = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"{p.id}/0" for p in problems[:4]]  # the last 2 are the dev split
    toy = get_task("toy")
    for row, p in zip(rows, problems):
        assert row["question"] == p.question
        assert row["response"] == toy.write_trace(p.question, random.Random(derive_seed(0, p.id, "trace", 0)), 0.5)
        assert row["mistake"] == ("<reflection>" in row["response"]) and toy.check_steps(p.question, row["response"]).ok
    summary = json.loads((out / "_DONE.json").read_text())["summary"]
    assert summary["steps"] == 2 and summary["traces"] == 4 and summary["skipped"] == 0
    assert summary["with_mistake"] == sum(r["mistake"] for r in rows)
    assert summary["dev_problems"] == 2 and summary["dev"]["samples"] == 2
    dev = [json.loads(line) for line in (out / "dev_samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in dev] == [p.id for p in problems[4:]]
    assert json.loads((out / "dev_metrics.json").read_text()) == summary["dev"]
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == 2 and logged["dev/samples"] == 2 and logged["dev/accuracy"] == summary["dev"]["accuracy"]
    assert (out / "model" / "model.safetensors").exists()
    assert "`cot` stage: chain-of-thought fine-tuning" in (out / "model" / "README.md").read_text()
