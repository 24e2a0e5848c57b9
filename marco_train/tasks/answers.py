"""Reading final answers out of text, shared by the math-style tasks (gsm8k, math500, aime).

Two kinds of text are read here, and they are kept apart on purpose:
* *reference* answers in a dataset's own format (`reference_from_solution`: the last `\\boxed{...}` of a
  MATH solution);
* the *model's* final answer (`final_answer_text`), which follows the prompt contract: the reasoning ends
  in an `<answer>` segment holding "The answer is: ..." and/or `\\boxed{...}`.

`final_answer_text(response)` is defined exactly as:
1. scope = the text of the last `<answer>` segment if that segment is closed; without one there is *no
   answer* (the paper's rule, tasks/base.py). The lenient variant for untagged models (Task.
   extract_answer_fallback, reported apart) reads the last `<answer>` segment closed or not, else the whole
   response;
2. if the scope holds a complete `\\boxed{...}` (braces balanced; `\\fbox` too), the answer is the content
   of the last one;
3. otherwise, if the scope holds "the answer is" (any case, optional ":"), the answer is the rest of that
   line after its last occurrence, with `$...$` / `\\(...\\)` delimiters and a trailing "." removed;
4. otherwise, or if that text is empty, there is *no answer* (None). A `\\boxed{` whose brace never
   closes (a truncated output) is not an answer.

We write this extraction ourselves because it is the prompt contract's answer format, not a dataset's;
equivalence of two math answers is left to Hugging Face's `math-verify` (`math_equal`).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import List, Optional

from ..prompts import closed_answer_text

BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
ANSWER_PHRASE_RE = re.compile(r"the answer is\s*:?", re.I)
MATH_TIMEOUT_SECONDS = 5


def boxed_contents(text: str) -> List[str]:
    """Contents of every complete `\\boxed{...}` in order, nested braces included; unclosed ones are skipped."""
    out = []
    for match in BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    out.append(text[start:i])
                    break
    return out


def last_boxed(text: str) -> Optional[str]:
    found = boxed_contents(text)
    return found[-1].strip() if found else None


def strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left):len(text) - len(right)].strip()
    return text


def answer_value_text(scope: str) -> Optional[str]:
    """The final answer as text inside an answer scope (rules 2-4 of the module docstring), or None."""
    boxed = last_boxed(scope)
    if boxed:
        return boxed
    phrases = list(ANSWER_PHRASE_RE.finditer(scope))
    if not phrases:
        return None
    rest = scope[phrases[-1].end():].strip()
    line = rest.split("\n", 1)[0].strip()
    if BOXED_RE.search(line):  # a box that never closes: cut off, not an answer
        return None
    line = strip_math_delimiters(strip_math_delimiters(line).rstrip(".").strip())
    return line or None


def final_answer_text(response: str) -> Optional[str]:
    """The model's final answer as text from the last closed <answer> segment, or None (= no answer)."""
    scope = closed_answer_text(response)
    return answer_value_text(scope) if scope is not None else None


def reference_from_solution(solution: str) -> Optional[str]:
    """A MATH-style reference answer: the last `\\boxed{...}` of the worked solution."""
    return last_boxed(solution)


def _timeout() -> Optional[int]:
    # math-verify times out through signal.alarm, which only works in the main thread
    return MATH_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_cached(text: str):
    from math_verify import parse

    return parse("\\boxed{" + text + "}", parsing_timeout=_timeout())


def math_equal(predicted: Optional[str], reference: str) -> bool:
    """Is the model's answer mathematically the reference? (math-verify: fractions, \\dfrac, spacing, units, sets)."""
    if predicted is None or not predicted.strip():
        return False
    from math_verify import verify

    gold, pred = _parse_cached(reference.strip()), _parse_cached(predicted.strip())
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=_timeout()))
