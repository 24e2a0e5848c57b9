"""The task interface and the problem-file reader shared by every task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from ..io import DataError, iter_jsonl

PROBLEM_FIELDS = ("id", "question", "answer")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # the reference answer, already parsed from the dataset's own format


def load_problems_file(path: str | Path, limit: int = 0,
                       check_reference: Optional[Callable[[str], Optional[str]]] = None) -> List[Problem]:
    """JSONL with id, question, answer per line; errors name file:line and field; an empty file is an error.
    check_reference: the task's rule for a reference answer (what is wrong with it, or None), so an answer the
    task cannot read fails here, naming the line, not in the middle of a search."""
    problems, seen = [], set()
    for where, record in iter_jsonl(path, required=PROBLEM_FIELDS):
        pid = str(record["id"])
        if pid in seen:
            raise DataError(f"{where}: duplicate problem id '{pid}'")
        seen.add(pid)
        if not isinstance(record["question"], str) or not record["question"].strip():
            raise DataError(f"{where}: problem '{pid}': field 'question' must be a non-empty string")
        problem = check_reference(str(record["answer"])) if check_reference else None
        if problem:
            raise DataError(f"{where}: problem '{pid}': answer {record['answer']!r} {problem}; fix the answer or "
                            f"the task")
        problems.append(Problem(pid, record["question"], str(record["answer"])))
    if not problems:
        raise DataError(f"{path}: no problems in file (expected JSONL lines with {', '.join(PROBLEM_FIELDS)})")
    return problems[:limit] if limit else problems


class Task:
    name = "base"
    system_prompt = ""

    def user_message(self, question: str) -> str:
        return question

    def load_problems(self, source: str, split: str = "", limit: int = 0) -> List[Problem]:
        """Problems from `source`. Default: our JSONL problem file (id, question, answer); dataset tasks
        (gsm8k, math500, aime, blocksworld) override this to read the dataset's own format by name or file."""
        return load_problems_file(source, limit=limit, check_reference=self.check_reference)

    def check_reference(self, reference: str) -> Optional[str]:
        """What makes `reference` unusable as this task's (already parsed) reference answer, or None."""
        return None if reference.strip() else "is empty"

    def extract_answer(self, response: str) -> Optional[str]:
        """The model's final answer, or None (= no answer)."""
        raise NotImplementedError

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        return predicted is not None and predicted.strip() == reference.strip()

    def score(self, response: str, reference: str) -> tuple[Optional[str], bool]:
        predicted = self.extract_answer(response)
        return predicted, self.is_correct(predicted, reference)
