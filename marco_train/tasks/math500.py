"""MATH / MATH-500: competition problems whose answers are LaTeX expressions.

Reference (the dataset's own format): MATH-500's `answer` field when present (columns problem, solution,
answer, subject, level, unique_id); otherwise (the original MATH release: problem, solution, level, type)
the last `\\boxed{...}` of `solution`, nested braces included. A row with neither is a data error.

Model answer: answers.answer_value_text of the last closed <answer> segment (its last `\\boxed{}`, else
its "The answer is:" line). *No answer* = no closed answer segment, neither is present in it, the box never
closes, or the text is empty.
Correct = Hugging Face math-verify says the two are equal (fractions, \\dfrac, spacing, units, sets, ...).
"""

from __future__ import annotations

from typing import Optional

from ..io import DataError
from .answers import answer_value_text, math_equal, reference_from_solution
from .sources import DatasetTask, HubDataset, get_field, reasoning_system_prompt


def parse_reference(row: dict, where: str) -> str:
    answer = get_field(row, "answer", where, required=False)
    if answer is not None and str(answer).strip():
        return str(answer).strip()
    solution = get_field(row, "solution", where, required=False)
    boxed = reference_from_solution(str(solution)) if solution is not None else None
    if not boxed:
        raise DataError(f"{where}: no 'answer' field and no complete \\boxed{{...}} in 'solution' to take the "
                        f"reference answer from")
    return boxed


class MathTask(DatasetTask):
    name = "math500"
    max_new_tokens = 2048
    hub = HubDataset("HuggingFaceH4/MATH-500", None, "test")
    id_fields = ("unique_id", "id")
    system_prompt = reasoning_system_prompt("followed by the final result in \\boxed{}, e.g. "
                                            "<answer>The answer is: \\boxed{\\frac{1}{2}}</answer>.")

    def parse_row(self, row: dict, where: str):
        return get_field(row, "problem", where), parse_reference(row, where)

    def answer_in(self, scope: str) -> Optional[str]:
        return answer_value_text(scope)

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        return math_equal(predicted, reference)


TASK = MathTask()
