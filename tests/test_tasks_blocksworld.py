"""blocksworld: PlanBench rows parsed into (statement, init/goal facts), plans verified by simulation."""

from __future__ import annotations

import json

import pytest

from marco_train.io import DataError
from marco_train.tasks import get_task
from marco_train.tasks.blocksworld import apply, parse_actions, simulate

FIXTURE = "tests/fixtures/tasks/blocksworld_planbench.jsonl"
NL_PLAN = ("unstack the green block from on top of the black block\nput down the green block\n"
           "unstack the black block from on top of the cyan block\nstack the black block on top of the white block\n"
           "pick up the cyan block\nstack the cyan block on top of the green block")
PDDL_PLAN = ("(unstack green black)\n(put-down green)\n(unstack black cyan)\n(stack black white)\n(pick-up cyan)\n"
             "(stack cyan green)")


@pytest.fixture(scope="module")
def problems():
    return get_task("blocksworld").load_problems(FIXTURE)


def answer(text: str) -> str:
    return "<sub_task>Firstly, I need to break down this task.</sub_task>\n<thinking>Green sits on black, so I " \
           f"unstack the green block from on top of the black block first.</thinking>\n<answer>{text}</answer>"


def test_reference_parsed_from_planbench_rows(problems):
    assert [p.id for p in problems] == ["7", "9"]  # the logistics row is skipped
    assert problems[0].question == (
        "As initial conditions I have that, the green block is clear, the white block is clear, the hand is empty, "
        "the green block is on top of the black block, the black block is on top of the cyan block, the cyan block "
        "is on the table and the white block is on the table.\nMy goal is to have that the black block is on top "
        "of the white block and the cyan block is on top of the green block.")
    ref = json.loads(problems[0].answer)
    assert sorted(map(tuple, ref["init"])) == sorted([
        ("clear", "green"), ("clear", "white"), ("handempty",), ("on", "green", "black"), ("on", "black", "cyan"),
        ("ontable", "cyan"), ("ontable", "white")])
    assert ref["goal"] == [["on", "black", "white"], ["on", "cyan", "green"]]
    assert ref["plan"][:2] == [["unstack", "green", "black"], ["put-down", "green"]] and len(ref["plan"]) == 6
    ref2 = json.loads(problems[1].answer)  # ground-truth plan in natural language
    assert ref2["plan"] == [["pick-up", "red"], ["stack", "red", "orange"]]
    assert ref2["goal"] == [["on", "red", "orange"]]


def _write_row(tmp_path, query: str, plan: str):
    path = tmp_path / "bw.jsonl"
    path.write_text(json.dumps({"domain": "blocksworld", "instance_id": 1, "query": query,
                                "ground_truth_plan": plan}) + "\n")
    return str(path)


def test_ground_truth_plan_that_fails_is_a_data_error(tmp_path):
    query = ("[STATEMENT]\nAs initial conditions I have that, the red block is clear, the blue block is clear, "
             "the hand is empty, the red block is on the table and the blue block is on the table.\n"
             "My goal is to have that the red block is on top of the blue block.\n\nMy plan is as follows:\n\n[PLAN]")
    assert get_task("blocksworld").load_problems(_write_row(tmp_path, query, "(pick-up red)\n(stack red blue)"))
    with pytest.raises(DataError, match=r"row 0: the ground-truth plan does not reach the goal .*step 2"):
        get_task("blocksworld").load_problems(_write_row(tmp_path, query, "(pick-up red)\n(stack blue red)"))


def test_unknown_fact_is_a_data_error(tmp_path):
    query = "As initial conditions I have that, the red block is sticky.\nMy goal is to have that the hand is empty."
    with pytest.raises(DataError, match="cannot read the fact 'the red block is sticky'"):
        get_task("blocksworld").load_problems(_write_row(tmp_path, query, ""))


def test_simulator_preconditions():
    state = frozenset({("clear", "a"), ("on", "a", "b"), ("ontable", "b"), ("handempty",)})
    assert apply(state, ("pick-up", "b")) == (None, "(pick-up b) needs (clear b)")
    assert apply(state, ("pick-up", "a")) == (None, "(pick-up a) needs (ontable a)")
    after, why = apply(state, ("unstack", "a", "b"))
    assert why == "" and after == {("holding", "a"), ("clear", "b"), ("ontable", "b")}
    assert apply(after, ("unstack", "b", "a")) == (None, "(unstack b a) needs (on b a)")
    assert apply(after, ("stack", "a", "c")) == (None, "unknown block 'c'")
    assert apply(after, ("stack", "a")) == (None, "stack takes 2 block(s), got 1")
    assert simulate(list(state), [("unstack", "a", "b"), ("put-down", "a"), ("pick-up", "a"), ("stack", "a", "a")]) \
        == (None, "step 4: (stack a a) needs (clear a)")


def test_action_phrases_both_syntaxes():
    text = ("1. Pick up the red block. 2) (stack red blue); then put-down the cyan block and unstack the x block "
            "from the y block")
    assert parse_actions(text) == [("pick-up", "red"), ("stack", "red", "blue"), ("put-down", "cyan"), ("unstack", "x")]


@pytest.mark.parametrize("response, correct", [
    (answer("The answer is:\n" + NL_PLAN), True),
    (answer("The answer is:\n" + PDDL_PLAN), True),
    (answer("The answer is:\n" + "\n".join(f"{i}. {line}" for i, line in enumerate(NL_PLAN.split("\n"), 1))), True),
    # an inapplicable action: black cannot be unstacked while green is on it
    (answer("The answer is:\nunstack the black block from on top of the cyan block\n" + NL_PLAN), False),
    # every action applicable, but the goal is not reached
    (answer("The answer is:\nunstack the green block from on top of the black block\nput down the green block"), False),
])
def test_model_plans(problems, response, correct):
    predicted, ok = get_task("blocksworld").score(response, problems[0].answer)
    assert predicted is not None and ok is correct


@pytest.mark.parametrize("response, correct", [
    # PlanBench's own plan block, no tags
    ("Let me think.\n[PLAN]\n" + NL_PLAN + "\n[PLAN END]", True),
    # truncated inside the answer: the extracted plan is incomplete
    ("<thinking>x</thinking>\n<answer>The answer is:\n" + "\n".join(NL_PLAN.split("\n")[:3]), False),
])
def test_untagged_and_unclosed_plans_only_count_for_the_fallback(problems, response, correct):
    task = get_task("blocksworld")
    assert task.score(response, problems[0].answer) == (None, False)  # no closed answer segment: no answer
    predicted = task.extract_answer_fallback(response)
    assert predicted is not None and task.is_correct(predicted, problems[0].answer) is correct


def test_extracted_plan_is_canonical(problems):
    assert get_task("blocksworld").extract_answer(answer("The answer is:\n" + NL_PLAN)) == PDDL_PLAN


@pytest.mark.parametrize("response", [
    answer("The answer is: I cannot find a plan."),               # answer without any action
    "<thinking>I will unstack the green block from on top of the black block.</thinking>",  # actions only in reasoning
    "",
])
def test_no_answer(problems, response):
    assert get_task("blocksworld").score(response, problems[0].answer) == (None, False)
