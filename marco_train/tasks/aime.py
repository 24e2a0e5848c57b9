"""AIME: competition problems whose answers are integers 0..999.

Reference (the dataset's own format, e.g. HuggingFaceH4/aime_2024: id, problem, solution, answer, url,
year; capitalised field names such as 'Problem'/'Answer' are accepted): the `answer` field, else the last
`\\boxed{}` of `solution`; it must be an integer 0..999 and is stored without leading zeros.

Model answer: as in math500. *No answer* = no final answer text in a closed <answer> segment.
Correct = math-verify equality with the reference ("033", "\\boxed{33}" and "33.0" all match 33).
"""

from __future__ import annotations

from typing import Optional

from ..io import DataError
from .answers import reference_from_solution
from .math500 import MathTask
from .sources import HubDataset, get_field, reasoning_system_prompt


def parse_reference(row: dict, where: str) -> str:
    answer = get_field(row, "answer", where, required=False)
    if answer is None or not str(answer).strip():
        solution = get_field(row, "solution", where, required=False)
        answer = reference_from_solution(str(solution)) if solution is not None else None
    text = str(answer).strip() if answer is not None else ""
    if not text.isdigit() or not 0 <= int(text) <= 999:
        raise DataError(f"{where}: AIME reference answer must be an integer 0..999, got {text!r}")
    return str(int(text))


class AimeTask(MathTask):
    name = "aime"
    max_new_tokens = 4096
    hub = HubDataset("HuggingFaceH4/aime_2024", None, "train")
    id_fields = ("id",)
    system_prompt = reasoning_system_prompt("followed by the final integer in \\boxed{}, e.g. "
                                            "<answer>The answer is: \\boxed{204}</answer>.")

    def parse_row(self, row: dict, where: str):  # AIME's own reference format; answers checked as MATH's
        return get_field(row, "problem", where), parse_reference(row, where)

    def check_reference(self, reference: str) -> Optional[str]:
        text = reference.strip()
        return None if text.isdigit() and int(text) <= 999 else "is not an integer 0..999 (AIME's answers are)"


TASK = AimeTask()
