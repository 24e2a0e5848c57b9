"""Uncertainty for accuracy on a fixed problem set: one variant's interval, and two variants compared on the
same problems (paired).

- `wilson(k, n)`: the Wilson score interval for a proportion k/n.
- `newcombe_paired(a, b, c, d)`: Newcombe's (1998, Statist. Med. 17:2635, method 10) interval for the
  difference p1 - p2 of two proportions measured on the same n problems, from the paired table a = both
  right, b = only the first right, c = only the second right, d = both wrong. It combines the two Wilson
  intervals with the correlation phi of the pairs (ad - bc over the square root of the four margins; an
  ad - bc above n/2 is reduced by n/2, one between 0 and n/2 counts as 0).
- `paired_bootstrap(x, y, resamples, seed)`: the percentile interval of mean(x - y) over problems resampled
  with replacement (the same problems for both variants), seeded.
- `mcnemar_exact(b, c)`: the exact two-sided McNemar p-value, 2 P(X <= min(b, c)) with X ~ Bin(b + c, 1/2),
  at most 1.
- `paired_table(x, y)`: (a, b, c, d) from two lists of per-problem correctness.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import List, Sequence, Tuple


def z_value(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(k: int, n: int, level: float = 0.95) -> Tuple[float, float]:
    if n <= 0:
        raise ValueError(f"wilson: n must be positive (is {n})")
    z = z_value(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_table(x: Sequence[bool], y: Sequence[bool]) -> Tuple[int, int, int, int]:
    if len(x) != len(y):
        raise ValueError(f"paired_table: {len(x)} and {len(y)} results; both variants need the same problems")
    a = sum(1 for i, j in zip(x, y) if i and j)
    b = sum(1 for i, j in zip(x, y) if i and not j)
    c = sum(1 for i, j in zip(x, y) if not i and j)
    return a, b, c, len(x) - a - b - c


def newcombe_paired(a: int, b: int, c: int, d: int, level: float = 0.95) -> Tuple[float, float]:
    """Interval for p1 - p2 = (b - c) / n (module docstring)."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, level)
    l2, u2 = wilson(a + c, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, p1 - p2 - delta), min(1.0, p1 - p2 + eps)


def quantile(sorted_values: Sequence[float], p: float) -> float:
    """The smallest value whose empirical CDF is at least p (the inverse CDF)."""
    k = max(1, math.ceil(p * len(sorted_values) - 1e-9))
    return sorted_values[k - 1]


def bootstrap_means(diffs: Sequence[float], resamples: int, seed: int) -> List[float]:
    rng = random.Random(seed)
    n = len(diffs)
    return sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))


def paired_bootstrap(x: Sequence[float], y: Sequence[float], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> Tuple[float, float]:
    """Percentile interval of the mean per-problem difference x - y over `resamples` seeded resamples."""
    if len(x) != len(y) or not x:
        raise ValueError(f"paired_bootstrap: {len(x)} and {len(y)} results; both need the same, non-empty problems")
    means = bootstrap_means([float(i) - float(j) for i, j in zip(x, y)], resamples, seed)
    return quantile(means, (1 - level) / 2), quantile(means, (1 + level) / 2)


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
