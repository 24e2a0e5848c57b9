"""The embedded toy world: seeded +/- chains over small numbers with exact integer answers.

Problems are generated deterministically (`generate`), split train/held-out by a hash of the question
(so no question is in both), and bundled as JSONL under mcts_data/problems/. The verifier reads
`The answer is: N`; a response without it has *no answer*.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import List, Optional

from .base import Problem, Task

ANSWER_RE = re.compile(r"The answer is:\s*(-?\d+)")
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


def generate(seed: int, count: int, heldout: bool) -> List[Problem]:
    """`count` distinct problems of 2-3 steps whose running value stays in 0..99, from one side of the split."""
    rng = random.Random(seed)
    seen, problems = set(), []
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
        problems.append(Problem(f"toy-{'h' if heldout else 't'}{len(problems):05d}", question, str(value)))
    return problems


class ToyTask(Task):
    name = "toy"
    system_prompt = ""

    def extract_answer(self, response: str) -> Optional[str]:
        from ..prompts import answer_text

        scope = answer_text(response)
        matches = ANSWER_RE.findall(scope if scope is not None else response)
        return matches[-1] if matches else None

    def check_reference(self, reference: str) -> Optional[str]:
        return None if re.fullmatch(r"\s*-?\d+\s*", reference) else "is not an integer (the toy task's answers are)"

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        return predicted is not None and int(predicted) == int(reference)


TASK = ToyTask()
