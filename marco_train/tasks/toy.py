"""The embedded toy world: seeded +/- chains over small numbers with exact integer answers.

Problems are generated deterministically (`generate`), split train/held-out by a hash of the question
(so no question is in both), and bundled as JSONL under mcts_data/problems/. The verifier reads
`The answer is: N` in the last closed <answer> segment; a response without it has *no answer*.

Step checker (`check_steps`, the rules of tasks/steps.py): a claim is an equation `a op b = c` in a
segment, true when it is one of the question's steps with its right result (so `11 + 8 = 19` is false in
"Compute 11 + 7 + 1 + 7." although the arithmetic holds), and the sub-task's "There are N steps", true when
N is the number of steps. The work after the last reflection is complete when its equations, a step
restated right after itself counted once, are exactly the question's steps in order (skipped, extra or out
of order steps are not).

Generation budget (`max_new_tokens`, the eval's default): the toy model has 512 positions and the bundled
prompts take at most 33 tokens, so 479 lets every output run to its end-of-turn or to the model's context.
The longest trace it was trained on (3 steps, a caught mistake and the corrected work) is 190 tokens, so an
output cut at 479 is a loop, counted as truncated.
"""

from __future__ import annotations

import hashlib
import random
import re
from itertools import groupby
from typing import Iterable, List, Optional

from ..io import DataError
from .base import Problem, StepVerdict, Task
from .steps import check_process
from .traces import STEP_COUNT_RE, Step

ANSWER_RE = re.compile(r"The answer is:\s*(-?\d+)")
CLAIM_RE = re.compile(r"(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")
QUESTION_RE = re.compile(r"Compute \d+(?: [+-] \d+)+\.")
MAX_OPERAND = 20
MAX_VALUE = 99


def is_heldout(question: str) -> bool:
    return int(hashlib.sha256(question.encode()).hexdigest(), 16) % 5 == 0


def steps_of(question: str) -> List[tuple]:
    """'Compute 12 + 7 - 5.' -> [(12, '+', 7, 19), (19, '-', 5, 14)]."""
    tokens = question.removeprefix("Compute ").rstrip(".").split()
    value, out = int(tokens[0]), []
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        result = value + int(operand) if op == "+" else value - int(operand)
        out.append((value, op, int(operand), result))
        value = result
    return out


def generate(seed: int, count: int, heldout: bool, prefix: str = "", exclude: Iterable[str] = ()) -> List[Problem]:
    """`count` distinct problems of 2-3 steps whose running value stays in 0..99, from one side of the split,
    none of whose questions is in `exclude`; ids `toy-<prefix>NNNNN` (prefix default: h held-out, t train)."""
    rng = random.Random(seed)
    seen, problems = set(exclude), []
    prefix = prefix or ("h" if heldout else "t")
    while len(problems) < count:
        n_steps = rng.choice((2, 3))
        value = rng.randint(1, MAX_OPERAND)
        text = f"{value}"
        for _ in range(n_steps):
            op = rng.choice("+-") if value > 0 else "+"
            operand = rng.randint(1, MAX_OPERAND) if op == "+" else rng.randint(1, max(1, value))
            if op == "+" and value + operand > MAX_VALUE:
                op, operand = "-", rng.randint(1, max(1, value))
            value = value + operand if op == "+" else value - operand
            text += f" {op} {operand}"
        question = f"Compute {text}."
        if question in seen or is_heldout(question) != heldout:
            continue
        seen.add(question)
        problems.append(Problem(f"toy-{prefix}{len(problems):05d}", question, str(value)))
    return problems


def claims(segment) -> List[tuple]:
    """(a, op, b, c) for every equation of a segment; ("steps", N) for a sub-task's step count."""
    out = [(int(a), op, int(b), int(c)) for a, op, b, c in CLAIM_RE.findall(segment.text)]
    if segment.type == "sub_task":
        out += [("steps", int(n)) for n in STEP_COUNT_RE.findall(segment.text)]
    return out


def check_toy_steps(question: str, response: str) -> StepVerdict:
    if not QUESTION_RE.fullmatch(question):
        raise DataError(f"toy step checker: {question[:80]!r} is not a toy question ('Compute 12 + 7 - 5.'); "
                        f"score these trees with their own task, or set the split's process_check: false")
    steps = steps_of(question)
    true = set(steps) | {("steps", len(steps))}
    return check_process(response, claims, lambda c: c in true,
                         lambda work: [c for c, _ in groupby(c for c in work if c[0] != "steps")] == steps)


class ToyTask(Task):
    name = "toy"
    system_prompt = ""
    max_new_tokens = 479  # the toy model's 512 positions minus its longest prompt (module docstring)

    def answer_in(self, scope: str) -> Optional[str]:
        matches = ANSWER_RE.findall(scope)
        return matches[-1] if matches else None

    def check_reference(self, reference: str) -> Optional[str]:
        return None if re.fullmatch(r"\s*-?\d+\s*", reference) else "is not an integer (the toy task's answers are)"

    def check_steps(self, question: str, response: str) -> StepVerdict:
        return check_toy_steps(question, response)

    def solution_steps(self, question: str) -> Optional[List[Step]]:
        """'Compute 12 + 7 - 5.' -> the steps '12 + 7 = 19', '19 - 5 = 14' (the bootstrap's traces)."""
        if not QUESTION_RE.fullmatch(question):
            return None
        return [Step(f"{a} {op} {b}", c) for a, op, b, c in steps_of(question)]

    def restart_text(self, question: str) -> str:
        return f"Start again from {question.removeprefix('Compute ').rstrip('.')}."

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        return predicted is not None and int(predicted) == int(reference)


TASK = ToyTask()
