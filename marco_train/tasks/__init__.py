"""Tasks: where problems come from and how an answer is extracted and verified.

The search's reward and the eval stage both use these, so "correct" means the same everywhere.
A task is one of TASK_MODULES by name (`task: gsm8k`) or, like a stage kind, a user's own module by its dotted
name (`task: mylab.tasks.units`, importable from PYTHONPATH) that defines `TASK`, an instance of a `Task` subclass
(docs/tutorials/your_own_task.md). A plug-in task's import closure is part of the fingerprint of every stage that
names it, as a stage's own is (fingerprint.py).
"""

from __future__ import annotations

import importlib
from typing import List, Optional

from ..io import DataError
from .base import Problem, Task, load_problems_file

TASK_MODULES = {"toy": "marco_train.tasks.toy",
                "gsm8k": "marco_train.tasks.gsm8k",
                "math500": "marco_train.tasks.math500",
                "aime": "marco_train.tasks.aime",
                "blocksworld": "marco_train.tasks.blocksworld",
                "multi_if": "marco_train.tasks.multi_if"}


def is_plugin(name: str) -> bool:
    """A dotted name is a user's own task module."""
    return "." in (name or "")


def _plugin(name: str):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ValueError(f"task module '{name}' is not importable ({e}); check PYTHONPATH") from None
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise ValueError(f"task module '{name}' defines no TASK, an instance of a marco_train.tasks.base.Task "
                         f"subclass (has: {type(task).__name__ if task is not None else 'nothing'})")
    return task


def get_task(name: str) -> Task:
    if is_plugin(name):
        return _plugin(name)
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(TASK_MODULES)}, or your own module by its "
                         f"dotted name)")
    return importlib.import_module(TASK_MODULES[name]).TASK


def check_task(name: str, section=None) -> Optional[str]:
    """A config field check (config.checked): the task name must be known, or name an importable task module."""
    try:
        get_task(name)
    except ValueError as e:
        return str(e)
    return None


def check_task_or_recorded(name: str, section=None) -> Optional[str]:
    """As check_task, but empty means the task the upstream split stage recorded."""
    return check_task(name) if name else None


def select_problems(task: Task, source: str, split: str, first: int, count: int) -> List[Problem]:
    """`count` problems (0 = all the rest) of `source` from the `first`-th on (0-based, in the source's order): a
    stage's `problems_file`, `split`, `first_problem` and `num_problems` keys."""
    problems = task.load_problems(source, split, first + count if count else 0)
    if first and first >= len(problems):
        raise DataError(f"{source}: first_problem={first} skips all of its {len(problems)} problems; lower it")
    return problems[first:]


def check_problems_source(source: str, section) -> Optional[str]:
    """A config field check for `problems_file`, given its section's `task` (checked before it)."""
    from .sources import source_problem

    if check_task(section.task):
        return None
    return source_problem(get_task(section.task), source)


__all__ = ["Problem", "Task", "check_problems_source", "check_task", "check_task_or_recorded", "get_task",
           "is_plugin", "load_problems_file", "select_problems"]
