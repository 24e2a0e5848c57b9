"""Tasks: where problems come from and how an answer is extracted and verified.

The search's reward and the eval stage both use these, so "correct" means the same everywhere.
"""

from __future__ import annotations

import importlib
from typing import Optional

from .base import Problem, Task, load_problems_file

TASK_MODULES = {"toy": "marco_train.tasks.toy",
                "gsm8k": "marco_train.tasks.gsm8k",
                "math500": "marco_train.tasks.math500",
                "aime": "marco_train.tasks.aime",
                "blocksworld": "marco_train.tasks.blocksworld",
                "multi_if": "marco_train.tasks.multi_if"}


def get_task(name: str) -> Task:
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(TASK_MODULES)})")
    return importlib.import_module(TASK_MODULES[name]).TASK


def check_task(name: str, section=None) -> Optional[str]:
    """A config field check (config.checked): the task name must be known."""
    return None if name in TASK_MODULES else f"unknown task '{name}' (known: {', '.join(TASK_MODULES)})"


def check_task_or_recorded(name: str, section=None) -> Optional[str]:
    """As check_task, but empty means the task the upstream split stage recorded."""
    return check_task(name) if name else None


def check_problems_source(source: str, section) -> Optional[str]:
    """A config field check for `problems_file`, given its section's `task` (checked before it)."""
    from .sources import source_problem

    if check_task(section.task):
        return None
    return source_problem(get_task(section.task), source)


__all__ = ["Problem", "Task", "check_problems_source", "check_task", "check_task_or_recorded", "get_task",
           "load_problems_file"]
