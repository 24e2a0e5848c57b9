"""Tagged reasoning traces for the toy task, in the node format of prompts.py.

Most traces are straight (sub_task, thinking per step, double_check, answer); a share contain a wrong
last step that the double_check catches, followed by reflection and thinking_from_scratch with the
corrected work, so the bootstrapped model has seen the reflection pattern the search grafts.
"""

from __future__ import annotations

import random
from typing import List

from ..prompts import REFLECTION_TEXT, SUB_TASK_PREFILL, render_response
from ..tasks.toy import steps_of


def _work(steps, wrong_last: int = 0) -> List[tuple]:
    segments = []
    for i, (a, op, b, result) in enumerate(steps):
        shown = result + wrong_last if i == len(steps) - 1 else result
        segments.append(("thinking", f"{a} {op} {b} = {shown}"))
    a, op, b, result = steps[-1]
    if wrong_last:
        segments.append(("double_check", f"Check: {a} {op} {b} = {result}, not {result + wrong_last}. Wrong."))
    else:
        segments.append(("double_check", f"Check: {a} {op} {b} = {result}. Correct."))
    return segments


def trace(question: str, rng: random.Random, error_rate: float = 0.2) -> str:
    steps = steps_of(question)
    segments = [("sub_task", f"{SUB_TASK_PREFILL} There are {len(steps)} steps.")]
    if rng.random() < error_rate:
        wrong = rng.choice([-3, -2, -1, 1, 2, 3])
        segments += _work(steps, wrong)
        segments += [("reflection", REFLECTION_TEXT),
                     ("thinking_from_scratch", f"Start again from {question.removeprefix('Compute ').rstrip('.')}.")]
    segments += _work(steps)
    segments.append(("answer", f"The answer is: {steps[-1][3]}"))
    return render_response(segments)
