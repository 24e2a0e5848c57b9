"""The process rules shared by the step checkers of the tasks whose reasoning makes checkable claims (toy, gsm8k).

A response is read as its tagged segments (prompts.parse_response). A task supplies three things: the claims of
one segment (`claims_of`: tuples whose last item is the claimed value, e.g. ("19", "+", "7", 26) for
"19 + 7 = 26"), whether a claim is true for the problem (`is_true`), and whether the work after the last
reflection is complete (`complete`). The rules, in this order (the first broken one is the verdict's reason):

1. every claim inside a `<double_check>` is true (`wrong_claim_in_check`); a check that calls the work wrong
   (`Wrong`, `incorrect`, `mistake`) must follow a false claim not yet caught (`false_alarm_in_check`), a
   value it quotes as wrong ("not 27") must be the value of such a claim (`misquoted_wrong_value`), and a
   check that does not call the work wrong must not follow one (`wrong_step_called_correct`);
2. a false claim outside a check is allowed only if the next check calls it wrong and a `<reflection>` is the
   very next segment after that check (`caught_without_reflection`; a reflection or the end of the response
   with a false claim not caught: `uncaught_wrong_step`);
3. after the last reflection (the whole response without one) the work is complete (`incomplete_work`); the
   work is the claims of the segments other than checks, reflections and answers (an answer's claims must
   be true, but stating the result is not deriving it).
4. only where the task asks for it (`follow_plan`): when the first sub_task announces a step count in the trace
   writer's words ("There are 2 steps.", tasks/traces.py), the attempt after the last reflection (the whole
   response without one) has exactly that many `<thinking>` steps (`plan_not_followed`): a path that repeats a
   step, or does a step its plan did not announce, is not the process its plan describes.
A segment left unclosed is `unclosed_segment`. Text between segments is not read.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, List, Sequence

from ..prompts import Segment, parse_response
from .base import StepVerdict
from .traces import announced_steps

CHECK, REFLECTION, ANSWER, SUB_TASK, THINKING = "double_check", "reflection", "answer", "sub_task", "thinking"
CALLS_WRONG_RE = re.compile(r"\b(?:wrong|incorrect|mistake)", re.I)
QUOTED_WRONG_RE = re.compile(r"\bnot\s+(-?\d+(?:\.\d+)?)")

OK = StepVerdict(True)


def check_process(response: str, claims_of: Callable[[Segment], List[tuple]], is_true: Callable[[tuple], bool],
                  complete: Callable[[List[tuple]], bool], follow_plan: bool = False) -> StepVerdict:
    """The verdict of rules 1-3 (and 4 with `follow_plan`; module docstring) on one response."""
    segments = parse_response(response)
    if any(not s.closed for s in segments):
        return StepVerdict(False, "unclosed_segment")
    pending: List[tuple] = []  # false claims outside checks, not yet called wrong by a check
    work: List[tuple] = []  # claims outside checks since the last reflection
    for i, seg in enumerate(segments):
        claims = claims_of(seg)
        if seg.type == CHECK:
            if not all(is_true(c) for c in claims):
                return StepVerdict(False, "wrong_claim_in_check")
            if CALLS_WRONG_RE.search(seg.text):
                if not pending:
                    return StepVerdict(False, "false_alarm_in_check")
                if not quotes_pending(seg.text, pending):
                    return StepVerdict(False, "misquoted_wrong_value")
                if i + 1 == len(segments) or segments[i + 1].type != REFLECTION:
                    return StepVerdict(False, "caught_without_reflection")
                pending = []
            elif pending:
                return StepVerdict(False, "wrong_step_called_correct")
        elif seg.type == REFLECTION:
            if pending:
                return StepVerdict(False, "uncaught_wrong_step")
            work = []
        else:
            pending += [c for c in claims if not is_true(c)]
            work += claims if seg.type != ANSWER else []
    if pending:
        return StepVerdict(False, "uncaught_wrong_step")
    if not complete(work):
        return StepVerdict(False, "incomplete_work")
    return OK if not follow_plan or follows_plan(segments) else StepVerdict(False, "plan_not_followed")


def follows_plan(segments: Sequence[Segment]) -> bool:
    """Rule 4: the last attempt has as many thinking steps as the first sub_task announced (if it announced any)."""
    plan = next((announced_steps(s.text) for s in segments if s.type == SUB_TASK), None)
    if plan is None:
        return True
    last = max((i for i, s in enumerate(segments) if s.type == REFLECTION), default=-1)
    return sum(s.type == THINKING for s in segments[last + 1:]) == plan


def quotes_pending(text: str, pending: Sequence[tuple]) -> bool:
    """Every value the check quotes as wrong ("not 27") is the claimed value of a pending false claim."""
    values = {Fraction(str(c[-1])) for c in pending}
    return all(Fraction(v) in values for v in QUOTED_WRONG_RE.findall(text))
