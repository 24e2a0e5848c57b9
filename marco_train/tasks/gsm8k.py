"""GSM8K: grade-school word problems with a number for an answer.

Reference (the dataset's own format): the `answer` field is a worked solution ending in "#### <number>";
the reference is that number with thousands commas and "$" removed (a row without "####" is a data error).

Model answer: the final answer text of the prompt contract (answers.answer_value_text of the last closed
<answer> segment: its last `\\boxed{}`, else its "The answer is:" line), then the LAST number in it
("$1,234.50" -> 1234.50; "5 + 3 = 8" -> 8). *No answer* = no closed answer segment, no final answer text in
it, or final answer text without any number. Correct = numerically equal (Decimal), so "18.00" matches "18".

Step checker (`check_steps`, the rules of tasks/steps.py): a claim is an equation `x op y [op z ...] = v`
(op one of + - * x × / ÷, usual precedence), true when the arithmetic holds. On our templated word
problems (tasks/word_problems.py, e.g. mcts_data/problems/word_*.jsonl) the work after the last
reflection is complete when every intermediate quantity of the question's template appears in it as a
number, and the attempt has as many <thinking> steps as its sub_task announced, when it announces a count
(rule 4, `plan_not_followed`: paths that repeat a step or add one their plan did not have); on any other question
(GSM8K itself) the arithmetic, the catch-and-reflect rules and that plan rule apply.

Known solutions (`solution_steps`, the cot stage's traces): those of our templated word problems; GSM8K's own
questions have none (their worked solutions are prose, not steps this task can write).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import List, Optional

from ..io import DataError
from .answers import answer_value_text
from .base import StepVerdict
from .sources import DatasetTask, HubDataset, get_field, reasoning_system_prompt
from .steps import check_process
from .traces import Step
from .word_problems import intermediates, solution_steps

NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
REFERENCE_MARK = "####"
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
EQUATION_RE = re.compile(rf"(?<![\d.])(\$?{_NUM}(?:\s*[-+*/×x÷]\s*\$?{_NUM})+)\s*=\s*\$?(-?{_NUM})")
OPERATOR_RE = re.compile(r"\s*([-+*/×x÷])\s*")


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


def evaluate(expression: str) -> Optional[Fraction]:
    """`3 + 4 x 2` -> 11 (* / before + -), exactly; None on a division by zero."""
    parts = OPERATOR_RE.split(expression.replace("$", "").replace(",", ""))
    terms, ops = [Fraction(parts[0])], []
    for op, number in zip(parts[1::2], parts[2::2]):
        value = Fraction(number)
        if op in "*×x/÷":
            if op in "/÷" and value == 0:
                return None
            terms[-1] = terms[-1] * value if op in "*×x" else terms[-1] / value
        else:
            terms.append(value)
            ops.append(op)
    total = terms[0]
    for op, value in zip(ops, terms[1:]):
        total = total + value if op == "+" else total - value
    return total


def claims(segment) -> List[tuple]:
    """(expression, value) per equation; ("mentions", value) per number (the work's quantities)."""
    out = [(expr, Fraction(value.replace(",", ""))) for expr, value in EQUATION_RE.findall(segment.text)]
    numbers = NUMBER_RE.findall(clean_number_text(segment.text))
    return out + [("mentions", Fraction(n.replace(",", ""))) for n in numbers]


def claim_is_true(claim: tuple) -> bool:
    return claim[0] == "mentions" or evaluate(claim[0]) == claim[1]


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

    def answer_in(self, scope: str) -> Optional[str]:
        text = answer_value_text(scope)
        return last_number(text) if text is not None else None

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        if predicted is None:
            return False
        try:
            return Decimal(predicted.replace(",", "")) == Decimal(reference.replace(",", ""))
        except InvalidOperation:
            return False

    def solution_steps(self, question: str) -> Optional[List[Step]]:
        """Our templated word problems' solutions (tasks/word_problems.py); None for GSM8K's own questions."""
        return solution_steps(question)

    def check_steps(self, question: str, response: str) -> StepVerdict:
        needed = intermediates(question) or []
        return check_process(response, claims, claim_is_true,
                             lambda work: all(Fraction(q) in {c[1] for c in work} for q in needed), follow_plan=True)


TASK = GSM8KTask()
