"""Tagged reasoning traces written from a known solution: the toy bootstrap's data and the cot stage's.

A task that knows how its problems are solved (`Task.solution_steps`) gives the steps of a question as `Step`s:
words that say what the step does (`lead`, may be empty), the arithmetic (`expression`, e.g. "15 + 7") and its
result. `solution_trace` writes them in the node format of prompts.py, the order the search's default transition
matrix expands (mcts/policy.py): a sub_task naming the number of steps, one thinking per step ("lead expression =
result"), a double_check of the last step, the answer ("The answer is: <last result>"). With probability
`error_rate` the trace first gets the last step wrong (its result off by 1-3 either way), the double_check
catches it ("Check: 15 + 7 = 22, not 23. Wrong."), then come the reflection (prompts.REFLECTION_TEXT), a
thinking_from_scratch (`restart`, the task's words) and the corrected work: the pattern the search grafts onto
wrong answers, so a model trained on these has seen it. Every trace passes the task's step checker when the
steps are right (tasks/steps.py: the wrong claim is caught, quoted and followed by a reflection).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..prompts import REFLECTION_TEXT, SUB_TASK_PREFILL, render_response

MISTAKES = (-3, -2, -1, 1, 2, 3)  # how far a wrong last step's result is off


@dataclass(frozen=True)
class Step:
    expression: str  # "15 + 7"
    result: int
    lead: str = ""  # "Ivan buys 7 more books: " (written before the expression)


STEP_COUNT_RE = re.compile(r"There (?:are|is) (\d+) steps?")  # step_count's words, read back


def step_count(n: int) -> str:
    return "There is 1 step." if n == 1 else f"There are {n} steps."


def announced_steps(text: str) -> Optional[int]:
    """The step count a sub_task announces in step_count's words, or None when it announces none."""
    m = STEP_COUNT_RE.search(text)
    return None if m is None else int(m.group(1))


def _work(steps: Sequence[Step], wrong_by: int = 0) -> List[tuple]:
    """One thinking per step (the last one's result off by `wrong_by`) and the double_check of the last step."""
    segments = [("thinking", f"{s.lead}{s.expression} = {s.result + (wrong_by if i == len(steps) - 1 else 0)}")
                for i, s in enumerate(steps)]
    last = steps[-1]
    if wrong_by:
        check = f"Check: {last.expression} = {last.result}, not {last.result + wrong_by}. Wrong."
    else:
        check = f"Check: {last.expression} = {last.result}. Correct."
    return segments + [("double_check", check)]


def solution_trace(steps: Sequence[Step], rng: random.Random, error_rate: float, restart: str) -> str:
    """The tagged trace of a solution (module docstring); `rng` draws whether and how the last step goes wrong."""
    segments = [("sub_task", f"{SUB_TASK_PREFILL} {step_count(len(steps))}")]
    if rng.random() < error_rate:
        segments += _work(steps, rng.choice(MISTAKES))
        segments += [("reflection", REFLECTION_TEXT), ("thinking_from_scratch", restart)]
    segments += _work(steps)
    segments.append(("answer", f"The answer is: {steps[-1].result}"))
    return render_response(segments)
