"""The task interface and the problem-file reader shared by every task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from ..io import DataError, iter_jsonl
from ..prompts import answer_text, closed_answer_text
from .traces import Step, solution_trace

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


@dataclass(frozen=True)
class StepVerdict:
    """A step checker's verdict on one response: ok, or the first rule it breaks (a short snake_case reason
    the split counts, e.g. "uncaught_wrong_step")."""
    ok: bool
    reason: str = ""


class Task:
    """How a task's problems are read, its answers extracted and verified, and (optionally) its steps checked.

    *No answer* (the paper's metric, the same on every task): the final answer is read only from the last
    `<answer>` segment, and only if that segment is closed; a response without one, or whose closed answer
    holds no value the task can read (`answer_in` gives None), has no answer. `extract_answer_fallback` reads
    the whole response when it has no answer segment (the old, lenient rule for untagged models); the eval
    reports it as a separate, labelled metric.

    *Step checker* (`check_steps`): judges the process of a response, not its outcome. The default has none
    (returns None, `has_step_checker` is False); a task with known intermediate results overrides it (toy:
    every arithmetic claim; gsm8k: arithmetic and, on our templated word problems, the intermediate
    quantities). A model-based checker (an LLM judge, a process reward model) plugs in the same way: a Task
    subclass whose `check_steps` calls it and maps its score to a StepVerdict, registered in
    tasks/__init__.py; the split stage then filters with it (docs: mcts_data/README.md, "Process check").

    *Known solutions* (`solution_steps`): a task that can solve its own problems gives a question's steps
    (tasks/traces.py), and `write_trace` turns them into a tagged trace, some with a caught mistake and a
    corrected retry: the cot stage's training data. The default has none (`can_write_traces` is False).
    """

    name = "base"
    system_prompt = ""
    max_new_tokens = 1024  # the eval's default generation budget for this task (eval stage, max_new_tokens: 0)

    def user_message(self, question: str) -> str:
        return question

    def load_problems(self, source: str, split: str = "", limit: int = 0) -> List[Problem]:
        """Problems from `source`. Default: our JSONL problem file (id, question, answer); dataset tasks
        (gsm8k, math500, aime, blocksworld) override this to read the dataset's own format by name or file."""
        return load_problems_file(source, limit=limit, check_reference=self.check_reference)

    def check_reference(self, reference: str) -> Optional[str]:
        """What makes `reference` unusable as this task's (already parsed) reference answer, or None."""
        return None if reference.strip() else "is empty"

    def answer_in(self, scope: str) -> Optional[str]:
        """The model's final answer in the text of an answer segment, or None (nothing this task can read)."""
        raise NotImplementedError

    def extract_answer(self, response: str) -> Optional[str]:
        """The model's final answer from the last, closed <answer> segment, or None (= no answer)."""
        scope = closed_answer_text(response)
        return self.answer_in(scope) if scope is not None else None

    def fallback_scope(self, response: str) -> Optional[str]:
        """Where the lenient rule looks: the last <answer> segment, closed or not, else the whole response."""
        scope = answer_text(response)
        return scope if scope is not None else response

    def extract_answer_fallback(self, response: str) -> Optional[str]:
        """The whole-response fallback (for untagged models; reported apart from the no-answer metric)."""
        scope = self.fallback_scope(response)
        return self.answer_in(scope) if scope is not None else None

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        return predicted is not None and predicted.strip() == reference.strip()

    def score(self, response: str, reference: str) -> tuple[Optional[str], bool]:
        predicted = self.extract_answer(response)
        return predicted, self.is_correct(predicted, reference)

    def solution_steps(self, question: str) -> Optional[List[Step]]:
        """The known solution of `question` (tasks/traces.py), or None when this task cannot solve it."""
        return None

    def restart_text(self, question: str) -> str:
        """The thinking_from_scratch of a trace's corrected retry."""
        return "Start again from the question."

    @property
    def can_write_traces(self) -> bool:
        return type(self).solution_steps is not Task.solution_steps

    def write_trace(self, question: str, rng, error_rate: float) -> Optional[str]:
        """A tagged trace of the known solution (a caught mistake and a retry with probability `error_rate`), or
        None when the task has no solution for `question`."""
        steps = self.solution_steps(question)
        return solution_trace(steps, rng, error_rate, self.restart_text(question)) if steps else None

    @property
    def has_step_checker(self) -> bool:
        return type(self).check_steps is not Task.check_steps

    def check_steps(self, question: str, response: str) -> Optional[StepVerdict]:
        """The process verdict on `response` to `question`; None = this task has no step checker."""
        return None
