"""multi_if (simplified, first turn only): rows from a Multi-IF-layout CSV, rule checks of the final reply."""

from __future__ import annotations

import json

import pytest

from marco_train.io import DataError
from marco_train.tasks import get_task
from marco_train.tasks.multi_if import follows

FIXTURE = "tests/fixtures/tasks/multi_if.csv"


@pytest.fixture(scope="module")
def problems():
    with pytest.warns(UserWarning, match="skipped 1 Multi-IF rows"):
        return get_task("multi_if").load_problems(FIXTURE)


def reply(text: str) -> str:
    return f"<thinking>No commas allowed.</thinking>\n<answer>The answer is: {text}</answer>"


def test_first_turn_rows_and_unsupported_skipped(problems):
    assert [p.id for p in problems] == ["9001:1:en", "9003:1:en"]  # the French row needs a language detector
    assert problems[0].question.startswith("Write a short note to a neighbour")
    assert json.loads(problems[0].answer) == {
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words", "startend:end_checker"],
        "kwargs": [{}, {"relation": "at least", "num_words": 12}, {"end_phrase": "Thank you."}]}


NOTE = "Our grey cat Milo went missing on Sunday night near the park so please call us if you see him. Thank you."


@pytest.mark.parametrize("response, predicted, correct", [
    (reply(NOTE), NOTE, True),
    (NOTE, None, False),                    # untagged reply: no answer (it is its own answer only for the fallback)
    (reply(NOTE.replace("park so", "park, so")), NOTE.replace("park so", "park, so"), False),  # a comma
    (reply("Milo is lost. Thank you."), "Milo is lost. Thank you.", False),  # under 12 words
    (reply(NOTE.removesuffix(" Thank you.")), NOTE.removesuffix(" Thank you."), False),  # wrong ending
    ("<thinking>I should write a note</thinking>", None, False),   # reasoning but no answer segment
    (reply(""), None, False),                                       # empty answer
])
def test_note_replies(problems, response, predicted, correct):
    assert get_task("multi_if").score(response, problems[0].answer) == (predicted, correct)


def test_untagged_reply_is_its_own_answer_for_the_fallback(problems):
    task = get_task("multi_if")
    assert task.extract_answer_fallback(NOTE) == NOTE and task.is_correct(NOTE, problems[0].answer)
    assert task.extract_answer_fallback("<thinking>I should write a note</thinking>") is None


def test_bullets_keyword_title(problems):
    good = "<<Fruits>>\n* apple\n* banana\n* cherry"
    assert get_task("multi_if").score(reply(good), problems[1].answer) == (good, True)
    assert not get_task("multi_if").is_correct(good + "\n* date", problems[1].answer)       # 4 bullets
    assert not get_task("multi_if").is_correct(good.replace("<<Fruits>>", "Fruits"), problems[1].answer)


@pytest.mark.parametrize("instruction, kwargs, text, expected", [
    ("change_case:english_lowercase", {}, "all lower here", True),
    ("change_case:english_lowercase", {}, "Not lower", False),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "One. Two! Three?", False),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3}, "One. Two! Three?", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "a catalogue", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "a Cat.", False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zoo zone", True),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, "{a: 1}", False),
    ("startend:quotation", {}, '"quoted"', True),
    ("combination:two_responses", {}, "first ****** second", True),
    ("combination:two_responses", {}, "same ****** same", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "one\n***\ntwo", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", True),
])
def test_checkers(instruction, kwargs, text, expected):
    assert follows(text, instruction, kwargs) is expected


def test_kwargs_that_do_not_fit_are_a_data_error(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text(open(FIXTURE).read().replace('\\""num_bullets\\"": 3', '\\""num_bulets\\"": 3'))
    with pytest.raises(DataError, match=r"row 2: kwargs .*num_bulets.* do not fit instruction"):
        get_task("multi_if").load_problems(str(bad))
