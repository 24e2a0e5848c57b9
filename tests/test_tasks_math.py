"""gsm8k, math500, aime: reference answers parsed from each dataset's own format (fixtures under
tests/fixtures/tasks, written by us in the original layouts) and model answers from the prompt contract."""

from __future__ import annotations

import json

import pytest

from marco_train.io import DataError
from marco_train.tasks import get_task
from marco_train.tasks.answers import boxed_contents, final_answer_text

FIXTURES = "tests/fixtures/tasks"


def tagged(answer: str, reasoning: str = "12 + 16 = 28") -> str:
    return f"<sub_task>Firstly, I need to break down this task.</sub_task>\n<thinking>{reasoning}</thinking>\n" \
           f"<answer>{answer}</answer>"


# ---- shared model-answer extraction -------------------------------------------------------------------

def test_boxed_contents_nested_and_unclosed():
    text = r"a \boxed{\frac{\sqrt{3}}{2}} b \boxed{\{1,2\}} c \boxed{\frac{1}{2}"
    assert boxed_contents(text) == [r"\frac{\sqrt{3}}{2}", r"\{1,2\}"]  # the unclosed last box is skipped


@pytest.mark.parametrize("response, expected", [
    (tagged(r"The answer is: \boxed{\frac{1}{2}}"), r"\frac{1}{2}"),
    (tagged("The answer is: 5."), "5"),
    (tagged("The answer is: $x^2$"), "x^2"),
    # the <answer> segment wins over boxes and phrases in the reasoning
    (tagged("The answer is: 7", reasoning=r"maybe \boxed{3}; the answer is 4"), "7"),
])
def test_final_answer_text(response, expected):
    assert final_answer_text(response) == expected


@pytest.mark.parametrize("response, expected", [
    # no tags at all (base model): the whole response is the fallback's scope, last box wins
    (r"First \boxed{2}, then correcting myself \boxed{3}.", "3"),
    ("So the answer is \\(\\frac{3}{4}\\).\nDone", r"\frac{3}{4}"),
    # an unclosed answer segment counts for the fallback when its text is complete
    ("<thinking>x</thinking>\n<answer>The answer is: 9", "9"),
])
def test_whole_response_fallback_reads_untagged_and_unclosed_answers(response, expected):
    assert final_answer_text(response) is None  # no closed answer segment: no answer
    assert get_task("math500").extract_answer_fallback(response) == expected


@pytest.mark.parametrize("response", [
    tagged("The answer is:"),                                   # empty answer
    tagged("I am not sure."),                                   # answer segment without phrase or box
    "<thinking>12 + 16 = 28</thinking>",                        # never reached an answer
    "<thinking>12 + 16 = 28</thinking>\n<answer>The answer is: \\boxed{\\frac{1}{2",  # box cut off (truncated)
    "",
])
def test_final_answer_text_none(response):
    assert final_answer_text(response) is None


# ---- GSM8K ------------------------------------------------------------------------------------------

def test_gsm8k_references_from_hash_lines():
    problems = get_task("gsm8k").load_problems(f"{FIXTURES}/gsm8k.jsonl")
    assert [p.id for p in problems] == ["gsm8k-00000", "gsm8k-00001", "gsm8k-00002"]
    assert [p.answer for p in problems] == ["28", "1250", "5.25"]
    assert problems[0].question.startswith("Mia buys 3 boxes")
    assert len(get_task("gsm8k").load_problems(f"{FIXTURES}/gsm8k.jsonl", limit=2)) == 2


def test_gsm8k_reference_without_hash_line_is_a_data_error(tmp_path):
    bad = tmp_path / "gsm8k.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": "It is 4."}) + "\n")
    with pytest.raises(DataError, match=r"row 0: .*'####"):
        get_task("gsm8k").load_problems(str(bad))


def test_gsm8k_accepts_our_problem_files():
    problems = get_task("gsm8k").load_problems("mcts_data/problems/word_test.jsonl", limit=3)
    assert len(problems) == 3 and all(p.id.startswith("word-") and p.answer.isdigit() for p in problems)


@pytest.mark.parametrize("response, predicted, correct", [
    (tagged("The answer is: 28"), "28", True),
    (tagged("The answer is: $28.00."), "28.00", True),
    (tagged(r"The answer is: \boxed{28}"), "28", True),
    (tagged("The answer is: 12 + 16 = 28 pencils"), "28", True),   # last number of the answer text
    (tagged("The answer is: $1,028"), "1028", False),
    (tagged("The answer is: -28"), "-28", False),
    (tagged("The answer is: twenty-eight"), None, False),         # answer text without a number = no answer
    ("<thinking>12 + 16 = 28</thinking>", None, False),            # 28 in the reasoning is not an answer
])
def test_gsm8k_model_answers(response, predicted, correct):
    assert get_task("gsm8k").score(response, "28") == (predicted, correct)


def test_gsm8k_commas_and_dollars():
    task = get_task("gsm8k")
    assert task.score(tagged("The answer is: $1,250."), "1250") == ("1250", True)
    assert task.score(tagged(r"The answer is: \$5.25"), "5.25") == ("5.25", True)


# ---- MATH / MATH-500 --------------------------------------------------------------------------------

def test_math500_references_from_answer_field():
    problems = get_task("math500").load_problems(f"{FIXTURES}/math500.jsonl")
    assert [p.id for p in problems] == ["test/prealgebra/9001.json", "test/prealgebra/9002.json",
                                        "test/precalculus/9003.json"]
    assert [p.answer for p in problems] == [r"\frac{1}{2}", r"5\text{ cm}", r"\left( 3, \frac{\pi}{2} \right)"]


def test_math_original_references_from_last_boxed_of_solution():
    problems = get_task("math500").load_problems(f"{FIXTURES}/math_original.json")
    assert [p.answer for p in problems] == [r"\frac{\sqrt{3}}{2}", "9"]
    assert [p.id for p in problems] == ["math500-00000", "math500-00001"]


def test_math_row_without_any_reference_is_a_data_error(tmp_path):
    bad = tmp_path / "math.jsonl"
    bad.write_text(json.dumps({"problem": "P", "solution": "no box here"}) + "\n")
    with pytest.raises(DataError, match=r"row 0: no 'answer' field and no complete \\boxed"):
        get_task("math500").load_problems(str(bad))


@pytest.mark.parametrize("predicted, reference, equal", [
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),          # \dfrac
    (r"\frac 1 2", r"\frac{1}{2}", True),             # spacing
    ("1/2", r"\frac{1}{2}", True),                    # plain fraction
    ("0.5", r"\frac{1}{2}", True),
    (r"\frac{2}{4}", r"\frac{1}{2}", True),           # unreduced fraction
    (r"\frac{1}{3}", r"\frac{1}{2}", False),
    ("5", r"5\text{ cm}", True),                      # units
    (r"5\,\text{cm}", r"5\text{ cm}", True),
    ("5 cm", r"5\text{ cm}", True),
    ("6", r"5\text{ cm}", False),
    (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True),   # \left( \right) and spacing
    (r"(\frac{\pi}{2}, 3)", r"\left( 3, \frac{\pi}{2} \right)", False),  # an ordered pair is ordered
    (r"\dfrac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}", True),
])
def test_math_equivalences(predicted, reference, equal):
    response = tagged(f"The answer is: \\boxed{{{predicted}}}")
    assert get_task("math500").score(response, reference) == (predicted, equal)


@pytest.mark.parametrize("response", [
    tagged("The answer is:"),
    "<thinking>so x = 1/2</thinking>",
    "<thinking>x</thinking>\n<answer>The answer is: \\boxed{\\dfrac{1}{2",  # truncated inside the box
])
def test_math_no_answer(response):
    assert get_task("math500").score(response, r"\frac{1}{2}") == (None, False)


# ---- AIME -------------------------------------------------------------------------------------------

def test_aime_references_and_ids():
    problems = get_task("aime").load_problems(f"{FIXTURES}/aime.jsonl")
    assert [(p.id, p.answer) for p in problems] == [("60", "33"), ("61", "24")]


def test_aime_from_parquet(tmp_path):
    from datasets import load_dataset

    path = tmp_path / "aime.parquet"
    load_dataset("json", data_files=f"{FIXTURES}/aime.jsonl", split="train").to_parquet(str(path))
    assert [(p.id, p.answer) for p in get_task("aime").load_problems(str(path))] == [("60", "33"), ("61", "24")]


@pytest.mark.parametrize("answer", ["1000", "3.5", ""])
def test_aime_reference_must_be_an_integer_0_999(tmp_path, answer):
    bad = tmp_path / "aime.jsonl"
    bad.write_text(json.dumps({"ID": "2024-I-1", "Problem": "P", "Answer": answer}) + "\n")
    with pytest.raises(DataError, match="integer 0..999"):
        get_task("aime").load_problems(str(bad))


@pytest.mark.parametrize("response, predicted, correct", [
    (tagged(r"The answer is: \boxed{33}"), "33", True),
    (tagged(r"The answer is: \boxed{033}"), "033", True),
    (tagged("The answer is: 33."), "33", True),
    (tagged(r"The answer is: \boxed{34}"), "34", False),
    (tagged("The answer is: unknown"), "unknown", False),
    ("<thinking>a + b = 34 so 33 pairs</thinking>", None, False),
])
def test_aime_model_answers(response, predicted, correct):
    assert get_task("aime").score(response, "33") == (predicted, correct)


def test_missing_local_file_names_it():
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        get_task("math500").load_problems(f"{FIXTURES}/nope.jsonl")


def test_named_dataset_path_with_split(tmp_path):
    # a dataset *name* goes through load_dataset(name, config, split=...); a local dataset folder takes the same
    # path without the Hub (the Hub itself is not reachable in tests)
    repo = tmp_path / "my_gsm8k"
    repo.mkdir()
    rows = [line for line in open(f"{FIXTURES}/gsm8k.jsonl")]
    (repo / "train.jsonl").write_text(rows[0])
    (repo / "test.jsonl").write_text("".join(rows[1:]))
    task = get_task("gsm8k")
    assert [p.answer for p in task.load_problems(str(repo), split="test")] == ["1250", "5.25"]
    assert [p.answer for p in task.load_problems(str(repo), split="train")] == ["28"]


# ---- the gsm8k step checker -------------------------------------------------------------------------

WORD = "Emma earns 6 dollars per hour and works 9 hours. Then Emma spends 9 dollars on lunch. " \
       "How many dollars does Emma have left?"  # a word_problems template: quantities 6 * 9 = 54, 54 - 9 = 45
PLAN2 = "<sub_task>Firstly, I need to break down this task. There are 2 steps.</sub_task>\n"


@pytest.mark.parametrize("question, response, reason", [
    (WORD, "<thinking>Emma earns 6 x 9 = 54 dollars.</thinking>\n<thinking>54 - 9 = 45</thinking>\n"
           "<answer>The answer is: 45</answer>", ""),
    # a false equation that happens to end on the right answer
    (WORD, "<thinking>6 * 9 = 54 dollars, then 54 - 9 = 44</thinking>\n<answer>The answer is: 45</answer>",
     "uncaught_wrong_step"),
    # the answer alone is not the work: the intermediate 54 never appears
    (WORD, "<thinking>She has some money left.</thinking>\n<answer>The answer is: 45 = 54 - 9</answer>",
     "incomplete_work"),
    # caught and reflected
    (WORD, "<thinking>6 * 9 = 56</thinking>\n<double_check>6 * 9 = 54, not 56: wrong</double_check>\n"
           "<reflection>Let me redo it.</reflection>\n<thinking>6 * 9 = 54 and 54 - 9 = 45</thinking>\n"
           "<answer>The answer is: 45</answer>", ""),
    # a check whose own arithmetic is false
    (WORD, "<thinking>6 * 9 = 54; 54 - 9 = 45</thinking>\n<double_check>54 - 9 = 46? no: 45</double_check>\n"
           "<answer>The answer is: 45</answer>", "wrong_claim_in_check"),
    # rule 4: the attempt has the steps its sub_task announced; a repeated step, a missing one, or an extra one
    (WORD, PLAN2 + "<thinking>6 * 9 = 54</thinking>\n<thinking>54 - 9 = 45</thinking>\n"
           "<answer>The answer is: 45</answer>", ""),
    (WORD, PLAN2 + "<thinking>6 * 9 = 54</thinking>\n<thinking>54 - 9 = 45</thinking>\n<thinking>54 - 9 = 45"
           "</thinking>\n<answer>The answer is: 45</answer>", "plan_not_followed"),
    (WORD, PLAN2 + "<thinking>6 * 9 = 54 and 54 - 9 = 45</thinking>\n<answer>The answer is: 45</answer>",
     "plan_not_followed"),
    (WORD, PLAN2.replace("are 2 steps", "is 1 step") + "<thinking>6 * 9 = 54</thinking>\n<thinking>54 - 9 = 45"
           "</thinking>\n<answer>The answer is: 45</answer>", "plan_not_followed"),
    # ... counted in the attempt after the last reflection
    (WORD, PLAN2 + "<thinking>6 * 9 = 54</thinking>\n<thinking>54 - 9 = 44</thinking>\n<double_check>54 - 9 = 45, "
           "not 44: wrong</double_check>\n<reflection>Let me redo it.</reflection>\n<thinking>6 * 9 = 54</thinking>"
           "\n<thinking>54 - 9 = 45</thinking>\n<answer>The answer is: 45</answer>", ""),
    # precedence and commas: 1,200 / 4 + 2 * 3 = 306
    ("Any GSM8K question?", "<thinking>1,200 / 4 + 2 * 3 = 306</thinking>\n<answer>The answer is: 306</answer>", ""),
    ("Any GSM8K question?", "<thinking>1,200 / 4 + 2 * 3 = 906</thinking>\n<answer>The answer is: 906</answer>",
     "uncaught_wrong_step"),
])
def test_gsm8k_step_checker(question, response, reason):
    verdict = get_task("gsm8k").check_steps(question, response)
    assert (verdict.ok, verdict.reason) == (not reason, reason)


def test_word_problem_quantities_come_from_the_templates():
    from marco_train.tasks.word_problems import generate, intermediates

    assert intermediates(WORD) == [54, 45]
    assert intermediates("A box holds 8 apples. How many boxes are needed for exactly 80 apples?") == [10]
    assert intermediates("Emma earns 6 dollars per hour and works 9 hours. Then Emma spends 8 dollars on lunch. "
                         "How many dollars does Emma have left?") is None  # the template uses one number twice
    assert intermediates("How many r are in strawberry?") is None
    for p in get_task("gsm8k").load_problems("mcts_data/problems/word_train.jsonl") + generate(7, 50, "x"):
        assert intermediates(p.question)[-1] == int(p.answer)
