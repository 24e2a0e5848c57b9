"""Templated grade-school word problems with exact integer answers, generated here (no benchmark items copied).

Used by the SmolLM2 pipeline (configs/smollm2.yaml) through the `gsm8k` task, whose answer extraction and
numeric check they share. `python -m marco_train.tasks.word_problems` rewrites the bundled files
mcts_data/problems/word_{train,test}.jsonl (deterministic).
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import List, Optional

from .base import Problem
from .traces import Step

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hana", "Ivan", "Julia", "Kofi", "Lena"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells"]


# kind -> (question template, its solution from the question's fields: the steps in order, each result an
# intermediate quantity, the last one the answer). The step checker of the gsm8k task reads the quantities back
# (`intermediates`); the cot stage writes traces from the steps (`solution_steps`, tasks/traces.py).
TEMPLATES = {
    0: ("{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?",
        lambda q: [Step(f"{q['a']} + {q['b']}", q["a"] + q["b"], f"{q['name']} buys {q['b']} more: ")]),
    1: ("{name} had {a} {item} and gave {b} of them to {friend}. How many {item} does {name} have left?",
        lambda q: [Step(f"{q['a']} - {q['b']}", q["a"] - q["b"], f"{q['name']} gives {q['b']} away: ")]),
    2: ("{name} buys {b} packs of {item} with {c} {item} in each pack. How many {item} does {name} buy?",
        lambda q: [Step(f"{q['b']} * {q['c']}", q["b"] * q["c"], f"{q['b']} packs of {q['c']}: ")]),
    3: ("A box holds {c} {item}. How many boxes are needed for exactly {n} {item}?",
        lambda q: [Step(f"{q['n']} / {q['c']}", q["n"] // q["c"], f"{q['n']} {q['item']} in boxes of {q['c']}: ")]),
    4: ("{name} has {a} {item}, buys {b} more, then gives {c} to {friend}. How many {item} does {name} have now?",
        lambda q: [Step(f"{q['a']} + {q['b']}", q["a"] + q["b"], f"{q['name']} buys {q['b']} more: "),
                   Step(f"{q['a'] + q['b']} - {q['c']}", q["a"] + q["b"] - q["c"],
                        f"{q['name']} gives {q['c']} to {q['friend']}: ")]),
    5: ("{name} earns {b} dollars per hour and works {c} hours. Then {name} spends {c} dollars on lunch. "
        "How many dollars does {name} have left?",
        lambda q: [Step(f"{q['b']} * {q['c']}", q["b"] * q["c"], f"{q['name']} earns {q['b']} for {q['c']} hours: "),
                   Step(f"{q['b'] * q['c']} - {q['c']}", q["b"] * q["c"] - q["c"],
                        f"{q['name']} spends {q['c']} on lunch: ")]),
}
NUMBER_FIELDS = ("a", "b", "c", "n")


def _pattern(template: str) -> re.Pattern:
    """A template as a regex: numbers as groups, words as groups, a field's later uses as back-references."""
    out, seen = "", set()
    for literal, name, _, _ in string.Formatter().parse(template):
        out += re.escape(literal)
        if name:
            group = r"\d+" if name in NUMBER_FIELDS else r"\w+"
            out += f"(?P={name})" if name in seen else f"(?P<{name}>{group})"
            seen.add(name)
    return re.compile(out + "$")


PATTERNS = {kind: _pattern(template) for kind, (template, _) in TEMPLATES.items()}


def _one(rng: random.Random) -> tuple[str, int]:
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(2, 30), rng.randint(2, 12), rng.randint(1, 9)
    kind = rng.randrange(6)
    if kind == 1:
        a = a + b
    if kind == 4:
        c = rng.randint(1, a + b)
    template, solution = TEMPLATES[kind]
    fields = {"name": name, "friend": friend, "item": item, "a": a, "b": b, "c": c, "n": b * c}
    return template.format(**fields), solution(fields)[-1].result


def solution_steps(question: str) -> Optional[List[Step]]:
    """The steps of a templated question's solution (tasks/traces.py), or None for any other question."""
    for kind, pattern in PATTERNS.items():
        match = pattern.match(question)
        if match:
            return TEMPLATES[kind][1]({k: int(v) if k in NUMBER_FIELDS else v for k, v in match.groupdict().items()})
    return None


def intermediates(question: str) -> Optional[List[int]]:
    """Every intermediate quantity of a templated question (the answer last), or None for any other question."""
    steps = solution_steps(question)
    return [s.result for s in steps] if steps is not None else None


def generate(seed: int, count: int, prefix: str) -> List[Problem]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        question, answer = _one(rng)
        if question not in seen:
            seen.add(question)
            out.append(Problem(f"{prefix}-{len(out):05d}", question, str(answer)))
    return out


if __name__ == "__main__":
    train = generate(0, 400, "word-t")
    test = [p for p in generate(1, 400, "word-h") if p.question not in {q.question for q in train}][:200]
    for name, problems in (("word_train", train), ("word_test", test)):
        path = Path("mcts_data/problems") / f"{name}.jsonl"
        path.write_text("".join(json.dumps(p.__dict__) + "\n" for p in problems))
        print(f"wrote {path} ({len(problems)} problems)")
