"""GSM8K: grade-school word problems with a number for an answer.

Reference (the dataset's own format): the `answer` field is a worked solution ending in "#### <number>";
the reference is that number with thousands commas and "$" removed (a row without "####" is a data error).

Model answer: the final answer text of the prompt contract (answers.final_answer_text: last `\\boxed{}` of
the <answer> segment, else its "The answer is:" line), then the LAST number in it ("$1,234.50" -> 1234.50;
"5 + 3 = 8" -> 8). *No answer* = no final answer text, or final answer text without any number.
Correct = numerically equal (Decimal), so "18.00" matches "18".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Optional

from ..io import DataError
from .answers import final_answer_text
from .sources import DatasetTask, HubDataset, get_field, reasoning_system_prompt

NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
REFERENCE_MARK = "####"


def clean_number_text(text: str) -> str:
    return text.replace("{,}", ",").replace("\\$", "").replace("$", "").replace("\\!", "")


def last_number(text: str) -> Optional[str]:
    """The last number in `text`, commas removed, or None."""
    numbers = NUMBER_RE.findall(clean_number_text(text))
    return numbers[-1].replace(",", "") if numbers else None


def parse_reference(answer: str, where: str) -> str:
    if REFERENCE_MARK not in answer:
        raise DataError(f"{where}: field 'answer' has no '{REFERENCE_MARK} <number>' line (GSM8K format)")
    final = clean_number_text(answer.rsplit(REFERENCE_MARK, 1)[1]).strip().replace(",", "")
    if not NUMBER_RE.fullmatch(final):
        raise DataError(f"{where}: the text after '{REFERENCE_MARK}' is {final!r}, not a number")
    return final


class GSM8KTask(DatasetTask):
    name = "gsm8k"
    hub = HubDataset("openai/gsm8k", "main", "test")
    system_prompt = reasoning_system_prompt("followed by the final number alone, e.g. "
                                            "<answer>The answer is: 42</answer>.")

    def parse_row(self, row: dict, where: str):
        question = get_field(row, "question", where)
        return question, parse_reference(str(get_field(row, "answer", where)), where)

    def check_reference(self, reference: str) -> Optional[str]:
        return None if NUMBER_RE.fullmatch(reference.strip()) else "is not a number (GSM8K's answers are)"

    def extract_answer(self, response: str) -> Optional[str]:
        text = final_answer_text(response)
        return last_number(text) if text is not None else None

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        if predicted is None:
            return False
        try:
            return Decimal(predicted.replace(",", "")) == Decimal(reference.replace(",", ""))
        except InvalidOperation:
            return False


TASK = GSM8KTask()
