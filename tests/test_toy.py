"""The toy world: problems, split, verifier, traces, and the locally built tokenizer (tested after a reload)."""

import json
import random

import pytest

from marco_train.prompts import REFLECTION_TEXT, build_prompt, parse_response, prompt_ids, response_ids
from marco_train.tasks import get_task, load_problems_file
from marco_train.tasks.toy import generate, is_heldout, steps_of
from marco_train.toy.tokenizer import build_tokenizer

TOY = get_task("toy")


def test_bundled_problems_are_correct_and_disjoint():
    train = load_problems_file("mcts_data/problems/toy_train.jsonl")
    heldout = load_problems_file("mcts_data/problems/toy_heldout.jsonl")
    assert len(train) == 2000 and len(heldout) == 500
    assert not {p.question for p in train} & {p.question for p in heldout}
    for p in train[:50] + heldout[:50]:
        assert steps_of(p.question)[-1][3] == int(p.answer)
        assert all(0 <= s[3] <= 99 for s in steps_of(p.question))
    assert generate(0, 5, heldout=True) == heldout[:5]  # the files are what the generator makes


def test_dev_set_is_held_out_side_and_disjoint_from_the_held_out_file():
    heldout = load_problems_file("mcts_data/problems/toy_heldout.jsonl")
    dev = load_problems_file("mcts_data/problems/toy_dev.jsonl")
    train = load_problems_file("mcts_data/problems/toy_train.jsonl")
    assert len(dev) == 500 and dev[0].id == "toy-d00000"
    assert not {p.question for p in dev} & ({p.question for p in heldout} | {p.question for p in train})
    assert all(is_heldout(p.question) for p in dev)
    assert dev == generate(1, 500, True, prefix="d", exclude=[p.question for p in heldout])
    assert all(steps_of(p.question)[-1][3] == int(p.answer) for p in dev)


def test_steps_of():
    assert steps_of("Compute 12 + 7 - 5.") == [(12, "+", 7, 19), (19, "-", 5, 14)]


def test_verifier():
    task = get_task("toy")
    assert task.score("<answer>The answer is: 14</answer>", "14") == ("14", True)
    assert task.score("<answer>The answer is: 15</answer>", "14") == ("15", False)
    assert task.score("<thinking>19 - 5 = 14</thinking>", "14") == (None, False)  # no answer
    # the final answer is the last answer segment, and only once it is closed (the paper's no-answer rule)
    assert task.extract_answer("<answer>The answer is: 3</answer>\n<answer>The answer is: 4") is None
    assert task.extract_answer("The answer is: 12 and more") is None
    # the whole-response fallback (untagged models; reported apart) reads them
    assert task.extract_answer_fallback("<answer>The answer is: 3</answer>\n<answer>The answer is: 4") == "4"
    assert task.extract_answer_fallback("The answer is: 12 and more") == "12"


QUESTION = "Compute 11 + 7 + 1 + 7."  # steps 11 + 7 = 18, 18 + 1 = 19, 19 + 7 = 26
HEAD = "<sub_task>Firstly, I need to break down this task. There are 3 steps.</sub_task>\n"
WORK = "<thinking>11 + 7 = 18</thinking>\n<thinking>18 + 1 = 19</thinking>\n<thinking>19 + 7 = 26</thinking>\n"
ANSWER = "<answer>The answer is: 26</answer>"
REFLECT = f"<reflection>{REFLECTION_TEXT}</reflection>\n<thinking_from_scratch>Start again.</thinking_from_scratch>\n"


@pytest.mark.parametrize("response, reason", [
    (HEAD + WORK + "<double_check>Check: 19 + 7 = 26. Correct.</double_check>\n" + ANSWER, ""),
    # a mistake caught by the double-check, a reflection, then the correct work: accepted
    (HEAD + WORK.replace("= 26", "= 27") + "<double_check>Check: 19 + 7 = 26, not 27. Wrong.</double_check>\n"
     + REFLECT + WORK + "<double_check>Check: 19 + 7 = 26. Correct.</double_check>\n" + ANSWER, ""),
    # the demo tree toy-t00025: a wrong step with the right answer
    (HEAD + "<thinking>11 + 7 = 26</thinking>\n<double_check>Check: 21 + 7 = 26. Correct.</double_check>\n" + ANSWER,
     "wrong_claim_in_check"),
    # a wrong step, no check at all, right answer
    (HEAD + WORK.replace("18 + 1 = 19", "18 + 1 = 20") + ANSWER, "uncaught_wrong_step"),
    # a wrong claim inside a double-check (the work itself is right)
    (HEAD + WORK + "<double_check>Check: 19 + 7 = 25, not 26. Wrong.</double_check>\n" + REFLECT + WORK + ANSWER,
     "wrong_claim_in_check"),
    # a check that approves a wrong step
    (HEAD + WORK.replace("= 26", "= 27") + "<double_check>Check: 18 + 1 = 19. Correct.</double_check>\n" + REFLECT
     + WORK + ANSWER, "wrong_step_called_correct"),
    # a check that calls right work wrong
    (HEAD + WORK + "<double_check>Check: 19 + 7 = 26, not 27. Wrong.</double_check>\n" + REFLECT + WORK + ANSWER,
     "false_alarm_in_check"),
    # caught, but no reflection follows the check
    (HEAD + WORK.replace("= 26", "= 27") + "<double_check>Check: 19 + 7 = 26, not 27. Wrong.</double_check>\n"
     + WORK + ANSWER, "caught_without_reflection"),
    # a reflection without a check calling the mistake wrong
    (HEAD + WORK.replace("= 26", "= 27") + REFLECT + WORK + ANSWER, "uncaught_wrong_step"),
    # right claims that skip a step, and a step that is arithmetic but not the question's (11 + 8 = 19)
    (HEAD + "<thinking>11 + 7 = 18</thinking>\n<thinking>19 + 7 = 26</thinking>\n" + ANSWER, "incomplete_work"),
    (HEAD + "<thinking>11 + 8 = 19</thinking>\n<thinking>19 + 7 = 26</thinking>\n" + ANSWER, "uncaught_wrong_step"),
    (HEAD.replace("3 steps", "2 steps") + WORK + ANSWER, "uncaught_wrong_step"),  # the step count is a claim
    ("<thinking>11 + 7 = 18</thinking>\n<double_check>" + WORK + ANSWER, "unclosed_segment"),
])
def test_toy_step_checker(response, reason):
    verdict = get_task("toy").check_steps(QUESTION, response)
    assert (verdict.ok, verdict.reason) == (not reason, reason)
    assert get_task("toy").score(response, "26") == ("26", True)  # every one has the right answer


def test_toy_traces_pass_the_step_checker():
    rng = random.Random(0)
    for p in load_problems_file("mcts_data/problems/toy_train.jsonl", limit=300):
        for error_rate in (0.0, 1.0):
            assert get_task("toy").check_steps(p.question, TOY.write_trace(p.question, rng, error_rate)).ok


def test_trace_format():
    plain = TOY.write_trace("Compute 12 + 7 - 5.", random.Random(0), error_rate=0.0)
    assert [s.type for s in parse_response(plain)] == ["sub_task", "thinking", "thinking", "double_check", "answer"]
    assert get_task("toy").score(plain, "14") == ("14", True)
    wrong = TOY.write_trace("Compute 12 + 7 - 5.", random.Random(0), error_rate=1.0)
    types = [s.type for s in parse_response(wrong)]
    assert types[:6] == ["sub_task", "thinking", "thinking", "double_check", "reflection", "thinking_from_scratch"]
    assert REFLECTION_TEXT in wrong and "Wrong." in wrong and get_task("toy").score(wrong, "14") == ("14", True)


def test_parse_response_unclosed_segment():
    segs = parse_response("<thinking>1 + 2 = 3</thinking>\n<answer>The ans")
    assert [(s.type, s.text, s.closed) for s in segs] == [("thinking", "1 + 2 = 3", True), ("answer", "The ans", False)]


def test_shipped_tokenizer_round_trips_after_reload(toy_tokenizer, tmp_path):
    toy_tokenizer.save_pretrained(tmp_path)
    from marco_train.models import load_tokenizer

    tok = load_tokenizer(tmp_path)
    text = TOY.write_trace("Compute 31 + 9 - 17.", random.Random(1), error_rate=1.0)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 20 and tok.decode(ids) == text
    for tag in ("<thinking>", "</thinking>", "<double_check>", "</answer>"):
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    assert tok.decode(tok("7 + 15 = 22", add_special_tokens=False)["input_ids"]) == "7 + 15 = 22"
    task = get_task("toy")
    expected = "<|im_start|>user\nCompute 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    assert build_prompt(tok, task, "Compute 1 + 2.") == expected
    assert response_ids(tok, "<answer>x</answer>")[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert prompt_ids(tok, task, "Compute 1 + 2.") == prompt_ids(toy_tokenizer, task, "Compute 1 + 2.")


def test_tokenizer_build_is_deterministic(toy_tokenizer):
    problems = load_problems_file("mcts_data/problems/toy_train.jsonl")
    rng = random.Random(1)
    corpus = [p.question for p in problems] + [TOY.write_trace(p.question, rng, 0.15) for p in problems]
    rebuilt = build_tokenizer(corpus, 512)
    assert rebuilt.get_vocab() == toy_tokenizer.get_vocab()


def test_shipped_checkpoint_has_a_record():
    record = json.load(open("marco_train/toy/checkpoint/record.json"))
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["no_answer_rate"] <= 1.0


def test_format_following():
    from marco_train.eval.metrics import follows_format

    good = TOY.write_trace("Compute 12 + 7 - 5.", random.Random(0), error_rate=1.0)
    assert follows_format(good)
    assert not follows_format(good.rsplit("</answer>", 1)[0])  # truncated: the answer tag never closes
    assert not follows_format("The answer is: 14")  # no tags at all
    assert not follows_format("<thinking>12 + 7 = 19</thinking>")  # no answer segment
