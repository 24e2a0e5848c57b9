"""Blocksworld (PlanBench plan generation): find a sequence of moves that turns an initial stack layout into
one satisfying the goal. Verified by simulating the plan, not by comparing it with the reference plan.

Dataset format (PlanBench as on the Hub, tasksource/planbench config task_1_plan_generation: task,
prompt_type, domain, instance_id, example_instance_ids, query, ground_truth_plan). `query` holds the domain
description, worked examples and, last, the instance: "[STATEMENT] As initial conditions I have that, <facts>.
My goal is to have that <facts>. My plan is as follows: [PLAN]". Rows whose `domain` is not "blocksworld" are
skipped. The question is that last statement; the reference is JSON {"init", "goal", "plan"} with facts as
lists ["on", "red", "blue"], ["ontable", "blue"], ["clear", "red"], ["handempty"], ["holding", "red"] and the
ground-truth plan's actions (checked to reach the goal when it names the statement's blocks).

Actions, in natural language or PDDL: "pick up the red block" / (pick-up red), "put down the red block" /
(put-down red), "stack the red block on top of the blue block" / (stack red blue), "unstack the red block
from on top of the blue block" / (unstack red blue). Semantics: PlanBench's 4-operator STRIPS domain.

Model answer: the plan is every action phrase, in order, found in the last closed <answer> segment. *No
answer* = no closed answer segment, or no action phrase in it. The whole-response fallback (untagged models,
reported apart) reads the last <answer> segment closed or not; without one, the text after the last "[PLAN]"
(up to "[PLAN END]"); without that, the text after the last "The answer is". The extracted plan is
returned canonically, one PDDL action per line. Correct = every action applicable in turn from the initial
state and every goal fact true at the end.

We write the simulator ourselves: the domain is four STRIPS operators and a PDDL planner/validator would
be a heavy non-Python dependency.
"""

from __future__ import annotations

import json
import re
from typing import FrozenSet, List, Optional, Tuple

from ..io import DataError
from ..prompts import answer_text
from .sources import DatasetTask, HubDataset, get_field, reasoning_system_prompt

Fact = Tuple[str, ...]
Action = Tuple[str, ...]  # (op, block[, block])
ARITY = {"pick-up": 1, "put-down": 1, "stack": 2, "unstack": 2}
_NL_OPS = {"pick up": "pick-up", "pick-up": "pick-up", "put down": "put-down", "put-down": "put-down",
           "stack": "stack", "unstack": "unstack"}
ACTION_RE = re.compile(
    r"\b(?P<op>pick[ -]up|put[ -]down|unstack|stack)\s+the\s+(?P<a>\w+)\s+block"
    r"(?:\s+(?:from\s+)?on\s+top\s+of\s+the\s+(?P<b>\w+)\s+block)?"
    r"|\(\s*(?P<pop>pick-up|put-down|unstack|stack)(?P<args>(?:\s+[\w-]+)*)\s*\)", re.I)
FACT_PATTERNS = [
    (re.compile(r"the (\w+) block is clear"), "clear"),
    (re.compile(r"the hand is empty"), "handempty"),
    (re.compile(r"the (\w+) block is on top of the (\w+) block"), "on"),
    (re.compile(r"the (\w+) block is on the table"), "ontable"),
    (re.compile(r"(?:i am|the hand is) holding the (\w+) block"), "holding"),
]
STATEMENT_RE = re.compile(r"As initial conditions I have that,?(?P<init>.*?)My goal is to have that(?P<goal>.*?)"
                          r"(?:My plan is as follows|\[PLAN\]|$)", re.S | re.I)
PLAN_SCOPE_RE = re.compile(r"\[PLAN\](?P<plan>(?:(?!\[PLAN\]).)*?)(?:\[PLAN END\]|$)", re.S)
ANSWER_PHRASE_RE = re.compile(r"the answer is\s*:?", re.I)

RULES = ("You are arranging blocks into stacks. Actions: pick up a block, unstack a block from on top of another "
         "block, put down a block, stack a block on top of another block. Rules: you can hold one block at a time "
         "and only pick up or unstack with an empty hand; you can pick up a block only if it is on the table and "
         "clear (nothing on it, not held); you can unstack a block only from the block it is really on, and only "
         "if it is clear; picking up or unstacking means you hold the block; you can put down or stack only the "
         "block you hold, and stack it only onto a clear block; after putting down or stacking, your hand is "
         "empty and the block below a stacked block is no longer clear.\n")


def parse_facts(text: str, where: str) -> List[Fact]:
    facts = []
    for part in re.split(r",\s*(?:and\s+)?|\s+and\s+", text.strip().rstrip(".").strip()):
        part = part.strip().lower()
        if not part:
            continue
        for pattern, predicate in FACT_PATTERNS:
            match = pattern.fullmatch(part)
            if match:
                facts.append((predicate, *match.groups()))
                break
        else:
            raise DataError(f"{where}: cannot read the fact {part!r} (expected e.g. 'the red block is clear', "
                            f"'the red block is on top of the blue block', 'the hand is empty')")
    return facts


def parse_actions(text: str) -> List[Action]:
    """Every action phrase in `text`, in order; wrong arity is kept (the simulator rejects it)."""
    actions = []
    for m in ACTION_RE.finditer(text):
        if m.group("op"):
            op = _NL_OPS[m.group("op").lower()]
            args = [m.group("a")] + ([m.group("b")] if m.group("b") else [])
        else:
            op, args = m.group("pop").lower(), m.group("args").split()
        actions.append((op, *(a.lower() for a in args)))
    return actions


def format_plan(actions: List[Action]) -> str:
    return "\n".join(f"({' '.join(a)})" for a in actions)


def apply(state: FrozenSet[Fact], action: Action) -> Tuple[Optional[FrozenSet[Fact]], str]:
    """(next state, "") or (None, why the action is not applicable)."""
    op, args = action[0], action[1:]
    if len(args) != ARITY[op]:
        return None, f"{op} takes {ARITY[op]} block(s), got {len(args)}"
    blocks = {x for fact in state for x in fact[1:]}
    unknown = [b for b in args if b not in blocks]
    if unknown:
        return None, f"unknown block {unknown[0]!r}"
    x, y = args[0], args[-1]
    # (preconditions, added facts); in this domain the deleted facts are exactly the preconditions
    need, add = {
        "pick-up": ([("clear", x), ("ontable", x), ("handempty",)], [("holding", x)]),
        "put-down": ([("holding", x)], [("clear", x), ("handempty",), ("ontable", x)]),
        "stack": ([("holding", x), ("clear", y)], [("clear", x), ("handempty",), ("on", x, y)]),
        "unstack": ([("on", x, y), ("clear", x), ("handempty",)], [("holding", x), ("clear", y)]),
    }[op]
    missing = [f for f in need if f not in state]
    if missing:
        return None, f"({' '.join(action)}) needs ({' '.join(missing[0])})"
    return frozenset((state - set(need)) | set(add)), ""


def simulate(init: List[Fact], plan: List[Action]) -> Tuple[Optional[FrozenSet[Fact]], str]:
    """The final state, or (None, reason) at the first inapplicable action."""
    state = frozenset(map(tuple, init))
    for step, action in enumerate(plan, 1):
        state, why = apply(state, action)
        if state is None:
            return None, f"step {step}: {why}"
    return state, ""


def solves(init: List[Fact], goal: List[Fact], plan: List[Action]) -> bool:
    final, _ = simulate(init, plan)
    return final is not None and all(tuple(g) in final for g in goal)


def fallback_plan_scope(response: str) -> Optional[str]:
    scope = answer_text(response)
    if scope is not None:
        return scope
    plans = list(PLAN_SCOPE_RE.finditer(response))
    if plans:
        return plans[-1].group("plan")
    phrases = list(ANSWER_PHRASE_RE.finditer(response))
    return response[phrases[-1].end():] if phrases else None


class BlocksworldTask(DatasetTask):
    name = "blocksworld"
    hub = HubDataset("tasksource/planbench", "task_1_plan_generation", "train")
    id_fields = ("instance_id", "id")
    system_prompt = RULES + reasoning_system_prompt(
        "followed by the plan, one action per line, e.g. <answer>The answer is:\nunstack the red block from on "
        "top of the blue block\nput down the red block</answer>.")

    def keep_row(self, row: dict) -> bool:
        domain = get_field(row, "domain", "", required=False)
        return domain is None or str(domain).lower() == "blocksworld"

    def parse_row(self, row: dict, where: str):
        query = str(get_field(row, "query", where))
        statements = list(STATEMENT_RE.finditer(query))
        if not statements:
            raise DataError(f"{where}: field 'query' has no 'As initial conditions I have that ... My goal is to "
                            f"have that ...' statement")
        last = statements[-1]
        init, goal = parse_facts(last.group("init"), where), parse_facts(last.group("goal"), where)
        question = f"As initial conditions I have that, {last.group('init').strip()}\n" \
                   f"My goal is to have that {last.group('goal').strip()}"
        plan = parse_actions(str(get_field(row, "ground_truth_plan", where, required=False) or ""))
        blocks = {x for fact in init for x in fact[1:]}
        if plan and all(x in blocks for a in plan for x in a[1:]) and not solves(init, goal, plan):
            _, why = simulate(init, plan)
            raise DataError(f"{where}: the ground-truth plan does not reach the goal from the stated initial "
                            f"conditions ({why or 'goal not reached'}); the statement was not read as intended")
        reference = {"init": [list(f) for f in init], "goal": [list(f) for f in goal],
                     "plan": [list(a) for a in plan]}
        return question, json.dumps(reference, sort_keys=True)

    def check_reference(self, reference: str) -> Optional[str]:
        try:
            ref = json.loads(reference)
        except ValueError:
            return "is not JSON {\"init\": [...], \"goal\": [...], \"plan\": [...]} (blocksworld's reference)"
        return None if isinstance(ref, dict) and {"init", "goal"} <= set(ref) else "lacks the 'init' and 'goal' facts"

    def answer_in(self, scope: str) -> Optional[str]:
        plan = parse_actions(scope)
        return format_plan(plan) if plan else None

    def fallback_scope(self, response: str) -> Optional[str]:
        return fallback_plan_scope(response)

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        if predicted is None:
            return False
        ref = json.loads(reference)
        return solves(ref["init"], ref["goal"], parse_actions(predicted))


TASK = BlocksworldTask()
