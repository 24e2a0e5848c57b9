"""The toy world: problems, split, verifier, traces, and the locally built tokenizer (tested after a reload)."""

import json
import random

from marco_train.prompts import REFLECTION_TEXT, build_prompt, parse_response, prompt_ids, response_ids
from marco_train.tasks import get_task, load_problems_file
from marco_train.tasks.toy import generate, steps_of
from marco_train.toy.tokenizer import build_tokenizer
from marco_train.toy.traces import trace


def test_bundled_problems_are_correct_and_disjoint():
    train = load_problems_file("mcts_data/problems/toy_train.jsonl")
    heldout = load_problems_file("mcts_data/problems/toy_heldout.jsonl")
    assert len(train) == 2000 and len(heldout) == 500
    assert not {p.question for p in train} & {p.question for p in heldout}
    for p in train[:50] + heldout[:50]:
        assert steps_of(p.question)[-1][3] == int(p.answer)
        assert all(0 <= s[3] <= 99 for s in steps_of(p.question))
    assert generate(0, 5, heldout=True) == heldout[:5]  # the files are what the generator makes


def test_steps_of():
    assert steps_of("Compute 12 + 7 - 5.") == [(12, "+", 7, 19), (19, "-", 5, 14)]


def test_verifier():
    task = get_task("toy")
    assert task.score("<answer>The answer is: 14</answer>", "14") == ("14", True)
    assert task.score("<answer>The answer is: 15</answer>", "14") == ("15", False)
    assert task.score("<thinking>19 - 5 = 14</thinking>", "14") == (None, False)  # no answer
    assert task.extract_answer("<answer>The answer is: 3</answer>\n<answer>The answer is: 4") == "4"
    assert task.extract_answer("The answer is: 12 and more") == "12"  # without tags, anywhere in the text


def test_trace_format():
    plain = trace("Compute 12 + 7 - 5.", random.Random(0), error_rate=0.0)
    assert [s.type for s in parse_response(plain)] == ["sub_task", "thinking", "thinking", "double_check", "answer"]
    assert get_task("toy").score(plain, "14") == ("14", True)
    wrong = trace("Compute 12 + 7 - 5.", random.Random(0), error_rate=1.0)
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
    text = trace("Compute 31 + 9 - 17.", random.Random(1), error_rate=1.0)
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
    corpus = [p.question for p in problems] + [trace(p.question, rng, 0.15) for p in problems]
    rebuilt = build_tokenizer(corpus, 512)
    assert rebuilt.get_vocab() == toy_tokenizer.get_vocab()


def test_shipped_checkpoint_has_a_record():
    record = json.load(open("marco_train/toy/checkpoint/record.json"))
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["no_answer_rate"] <= 1.0


def test_format_following():
    from marco_train.eval.metrics import follows_format

    good = trace("Compute 12 + 7 - 5.", random.Random(0), error_rate=1.0)
    assert follows_format(good)
    assert not follows_format(good.rsplit("</answer>", 1)[0])  # truncated: the answer tag never closes
    assert not follows_format("The answer is: 14")  # no tags at all
    assert not follows_format("<thinking>12 + 7 = 19</thinking>")  # no answer segment
