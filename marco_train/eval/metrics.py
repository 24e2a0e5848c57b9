"""Evaluation metrics as pure functions of scored samples.

Definitions: *no answer* = no final answer inside the last, closed `<answer>` segment (Task.extract_answer,
the paper's rule, alike on every task); `no_answer_rate_finished` = the same among the outputs that were not
truncated (null when every output was); *truncated* = the generation hit max_new_tokens (or the model's
context) before its end-of-turn token; `fallback_accuracy` / `fallback_no_answer_rate` = the same scoring with
the whole-response fallback (Task.extract_answer_fallback: an unclosed or missing answer segment is looked
for in the rest of the text), a separate metric for untagged models, never the headline; Test@N = share of
problems solved by at least one of their first N samples (in record order), which needs at least N samples
of every problem; *format ok* = the response follows the tagged format of the prompt contract: every segment is a closed
`<type>...</type>` tag, there is at least one, and the last one is an `<answer>` segment.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List

from ..prompts import parse_response


def follows_format(response: str) -> bool:
    segments = parse_response(response)
    return bool(segments) and all(s.closed for s in segments) and segments[-1].type == "answer"


def score_samples(task, problems, generations) -> List[dict]:
    """One record per (problem, generation) pair, in order."""
    records = []
    for problem, gen in zip(problems, generations):
        predicted, correct = task.score(gen.text, problem.answer)
        fallback = task.extract_answer_fallback(gen.text)
        records.append({"id": problem.id, "question": problem.question, "reference": problem.answer,
                        "response": gen.text, "predicted": predicted, "correct": bool(correct),
                        "no_answer": predicted is None, "truncated": gen.truncated,
                        "format_ok": follows_format(gen.text), "response_tokens": len(gen.token_ids),
                        "fallback_predicted": fallback,
                        "fallback_correct": bool(task.is_correct(fallback, problem.answer))})
    return records


def summarize(records: List[dict], test_at: Iterable[int] = ()) -> Dict[str, float]:
    n = len(records)
    if n == 0:
        return {"samples": 0}
    finished = [r for r in records if not r["truncated"]]
    out = {
        "samples": n,
        "accuracy": sum(r["correct"] for r in records) / n,
        "no_answer_rate": sum(r["no_answer"] for r in records) / n,
        "truncation_rate": sum(r["truncated"] for r in records) / n,
        "no_answer_rate_finished": sum(r["no_answer"] for r in finished) / len(finished) if finished else None,
        "mean_response_tokens": sum(r["response_tokens"] for r in records) / n,
    }
    for key, name in (("format_ok", "format_rate"), ("fallback_correct", "fallback_accuracy")):
        if all(key in r for r in records):
            out[name] = sum(r[key] for r in records) / n
    if all("fallback_predicted" in r for r in records):
        out["fallback_no_answer_rate"] = sum(r["fallback_predicted"] is None for r in records) / n
    by_problem: Dict[str, List[bool]] = defaultdict(list)
    for r in records:
        by_problem[r["id"]].append(r["correct"])
    for k in test_at:
        short = next((pid for pid, c in by_problem.items() if len(c) < k), None)
        if short is not None:
            raise ValueError(f"test@{k} needs at least {k} samples per problem, but problem '{short}' has "
                             f"{len(by_problem[short])}; raise samples_per_problem or drop {k} from test_at")
        out[f"test@{k}"] = sum(any(c[:k]) for c in by_problem.values()) / len(by_problem)
    return out
