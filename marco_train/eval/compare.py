"""Two evaluations of the same problems compared, problem by problem: what the result tables print beside each
variant (marco_train/report.py). Pure functions of the eval stage's scored samples (samples.jsonl records).

- `paired_difference(x, y)`: accuracy of x minus accuracy of y on the same problems, with Newcombe's paired
  95 % interval (method 10, the printed one) and the paired bootstrap's (10,000 resamples of the problems,
  seed 0; in the CSV/JSON beside it), the paired table's discordant counts and the exact McNemar p.
- `correct_by_problem(records)`: (ids, correctness) of an eval with one sample per problem, in record order.

The formulas are in marco_train/eval/intervals.py.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .intervals import mcnemar_exact, newcombe_paired, paired_bootstrap, paired_table

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def paired_difference(x: Sequence[bool], y: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Dict[str, float]:
    """x - y on the same problems (x[i], y[i]: problem i right or not); differences as fractions, not points."""
    both, only_x, only_y, neither = paired_table(x, y)
    n = len(x)
    if n == 0:
        raise ValueError("paired_difference: no results")
    low, high = newcombe_paired(both, only_x, only_y, neither, LEVEL)
    boot_low, boot_high = paired_bootstrap([float(v) for v in x], [float(v) for v in y], resamples, seed, LEVEL)
    return {"difference": (only_x - only_y) / n, "newcombe_low": low, "newcombe_high": high,
            "bootstrap_low": boot_low, "bootstrap_high": boot_high, "mcnemar_p": mcnemar_exact(only_x, only_y),
            "both": both, "only_first": only_x, "only_second": only_y, "neither": neither, "problems": n}


def correct_by_problem(records: Sequence[dict]) -> Optional[Tuple[List[str], List[bool]]]:
    """(ids, correct) when every problem has exactly one record; None otherwise (sampled evals: no pairing)."""
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids) or not ids:
        return None
    return ids, [bool(r["correct"]) for r in records]
