"""Tasks as the eval stage uses them: registry, prompts, score_samples (no-answer / truncated) and Test@N."""

from __future__ import annotations

import re

import pytest

from marco_train.engines.base import Completion
from marco_train.eval.metrics import score_samples, summarize
from marco_train.io import read_jsonl
from marco_train.prompts import NODE_TYPES, build_prompt
from marco_train.tasks import TASK_MODULES, get_task

FIXTURES = "tests/fixtures/tasks"
DATASET_TASKS = ("gsm8k", "math500", "aime", "blocksworld", "multi_if")


@pytest.mark.parametrize("name", DATASET_TASKS)
def test_prompt_asks_for_the_tagged_format(name, toy_tokenizer):
    task = get_task(name)
    assert task.name == name
    tags = set(re.findall(r"<(\w+)>", task.system_prompt))
    assert {"thinking", "answer"} <= tags <= set(NODE_TYPES)
    assert "The answer is:" in task.system_prompt
    prompt = build_prompt(toy_tokenizer, task, "What is 2 + 2?")
    assert prompt.index(task.system_prompt) < prompt.index("What is 2 + 2?")


def test_score_samples_no_answer_and_truncated():
    task = get_task("gsm8k")
    problems = task.load_problems(f"{FIXTURES}/gsm8k.jsonl")  # references 28, 1250, 5.25
    cases = [
        (problems[0], "<thinking>36 - 8 = 28</thinking>\n<answer>The answer is: 28</answer>", False),  # right
        (problems[0], "<thinking>36 - 8 = 28</thinking>\n<answer>The answer is: 27</answer>", False),  # wrong
        (problems[1], "<thinking>250 * 5 = 1250</thinking>\n<thinking>so the total", True),         # cut off
        (problems[1], "<thinking>250 * 5 = 1250</thinking>\n<answer>The answer is: 1,250", True),  # cut, but answered
        (problems[2], "<thinking>7.50 - 2.25 = 5.25</thinking>\n<answer>No idea.</answer>", False),  # malformed
    ]
    gens = [Completion(text, list(range(10 * (i + 1))), [], [], [], "length" if cut else "eos")
            for i, (_, text, cut) in enumerate(cases)]
    records = score_samples(task, [p for p, _, _ in cases], gens)
    # the cut-off answer is no answer (its segment never closed); the fallback reads it
    assert [(r["predicted"], r["correct"], r["no_answer"], r["truncated"]) for r in records] == [
        ("28", True, False, False), ("27", False, False, False), (None, False, True, True),
        (None, False, True, True), (None, False, True, False)]
    assert [(r["fallback_predicted"], r["fallback_correct"]) for r in records] == [
        ("28", True), ("27", False), (None, False), ("1250", True), (None, False)]
    assert summarize(records) == {"samples": 5, "accuracy": 1 / 5, "no_answer_rate": 3 / 5,
                                  "truncation_rate": 2 / 5, "no_answer_rate_finished": 1 / 3,
                                  "mean_response_tokens": 30.0,
                                  "format_rate": 3 / 5,  # the two closed answers and the closed "No idea." one
                                  "fallback_accuracy": 2 / 5, "fallback_no_answer_rate": 2 / 5}


def test_test_at_n_on_hand_made_samples():
    # 4 problems x 32 samples, interleaved (sample s of p1..p4, then s+1); first correct sample:
    # p1 at 0, p2 at 5, p3 at 19, p4 never (and never answers); p3's samples 25..31 are truncated (64 tokens).
    records = list(read_jsonl(f"{FIXTURES}/test_at_n_samples.jsonl"))
    metrics = summarize(records, test_at=[1, 8, 32])
    assert metrics == {"samples": 128, "accuracy": 5 / 128, "no_answer_rate": 32 / 128, "truncation_rate": 7 / 128,
                       "no_answer_rate_finished": 32 / 121,  # p4's 32 samples are all finished
                       "mean_response_tokens": (121 * 10 + 7 * 64) / 128,
                       "test@1": 1 / 4, "test@8": 2 / 4, "test@32": 3 / 4}
    # Test@N counts each problem's own first N samples, not the first N records of the file
    assert summarize(records, test_at=[4])["test@4"] == 1 / 4
    assert summarize(records, test_at=[6])["test@6"] == 2 / 4


def test_test_at_n_needs_n_samples_per_problem():
    records = list(read_jsonl(f"{FIXTURES}/test_at_n_samples.jsonl"))
    with pytest.raises(ValueError, match="test@64 needs at least 64 samples per problem, but problem 'p1' has 32"):
        summarize(records, test_at=[64])


# ---- the paper's no-answer rule, on every task alike -------------------------------------------------

UNREADABLE = {"toy": "The answer is: five", "gsm8k": "The answer is: five", "math500": "The answer is:",
              "aime": "The answer is:", "blocksworld": "The answer is: there is no plan", "multi_if": "The answer is:"}
READABLE = {"toy": ("The answer is: 5", "5"), "gsm8k": ("The answer is: 5", "5"), "math500": ("The answer is: 5", "5"),
            "aime": (r"The answer is: \boxed{5}", "5"),
            "blocksworld": ("The answer is:\npick up the red block", "(pick-up red)"),
            "multi_if": ("The answer is: five", "five")}


@pytest.mark.parametrize("name", sorted(TASK_MODULES))
@pytest.mark.parametrize("response", [
    "<sub_task>Two steps.</sub_task>\n<thinking>so it is \\boxed{5}",                 # unfinished thinking, a box
    "<sub_task>Two steps.</sub_task>\n<thinking>The answer is: 5",                    # unfinished, the phrase
    "<thinking>so \\boxed{5}</thinking>\n<thinking>The answer is: 5</thinking>",       # closed, but no answer segment
    "<thinking>2 + 3 = 5</thinking>\n<answer>The answer is: 5",                       # answer segment never closed
    "The answer is: 5 \\boxed{5}",                                                     # untagged
])
def test_no_closed_answer_segment_is_no_answer_on_every_task(name, response):
    assert get_task(name).extract_answer(response) is None


@pytest.mark.parametrize("name", sorted(TASK_MODULES))
def test_closed_answer_segment_with_an_unreadable_value_is_no_answer(name):
    task = get_task(name)
    assert task.extract_answer(f"<thinking>2 + 3 = 5</thinking>\n<answer>{UNREADABLE[name]}</answer>") is None
    text, value = READABLE[name]
    assert task.extract_answer(f"<thinking>2 + 3 = 5</thinking>\n<answer>{text}</answer>") == value
