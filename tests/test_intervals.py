"""The interval code against hand values: Wilson and Newcombe by formula, the bootstrap against exact
enumeration of every resample of a 4-problem case, McNemar's exact p by binomial sums."""

from __future__ import annotations

import itertools
import math

import pytest

from marco_train.eval.intervals import mcnemar_exact, newcombe_paired, paired_bootstrap, paired_table, quantile, wilson

Z2 = 1.959963984540054 ** 2


def test_wilson_hand_values():
    # Newcombe (1998, Statist. Med. 17:857), example 81/263: 0.2553 to 0.3662
    lo, hi = wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    # 0/n: the lower limit is 0 and the upper z^2 / (n + z^2); n/n mirrors it
    assert wilson(0, 10) == pytest.approx((0.0, Z2 / (10 + Z2)), abs=1e-12)
    assert wilson(10, 10) == pytest.approx((10 / (10 + Z2), 1.0), abs=1e-12)
    # 8/10 by the formula: centre (8 + z^2/2) / (10 + z^2), half z sqrt(10 * .8 * .2 + z^2/4) / (10 + z^2)
    centre, half = (8 + Z2 / 2) / (10 + Z2), math.sqrt(Z2) * math.sqrt(1.6 + Z2 / 4) / (10 + Z2)
    assert wilson(8, 10) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)


def test_newcombe_paired_by_formula():
    # a=5 both right, b=3 only the first, c=1 only the second, d=1 neither: p1 = .8, p2 = .6;
    # ad - bc = 2 <= n/2 = 5, so phi = 0 and the limits are D -/+ the two Wilson distances squared and added
    (l1, u1), (l2, u2) = wilson(8, 10), wilson(6, 10)
    lo, hi = newcombe_paired(5, 3, 1, 1)
    assert lo == pytest.approx(0.2 - math.sqrt((0.8 - l1) ** 2 + (u2 - 0.6) ** 2), abs=1e-12)
    assert hi == pytest.approx(0.2 + math.sqrt((0.6 - l2) ** 2 + (u1 - 0.8) ** 2), abs=1e-12)
    assert (lo, hi) == pytest.approx((-0.18696, 0.52109), abs=1e-5)
    # a=40, b=5, c=2, d=3 (n=50): ad - bc = 110 > 25, phi = (110 - 25) / sqrt(45 * 5 * 42 * 8)
    phi = 85 / math.sqrt(45 * 5 * 42 * 8)
    (l1, u1), (l2, u2) = wilson(45, 50), wilson(42, 50)
    p1, p2 = 0.9, 0.84
    lo, hi = newcombe_paired(40, 5, 2, 3)
    assert lo == pytest.approx(0.06 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    assert hi == pytest.approx(0.06 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    # positive correlation narrows it: with phi = 0 each limit would be farther out
    assert 0.06 - lo < math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    assert hi - 0.06 < math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    # negative correlation is used as is: ad - bc = 0 - 25 = -25
    phi = -25 / math.sqrt(5 * 5 * 5 * 5)
    (l1, u1), (l2, u2) = wilson(5, 10), wilson(5, 10)
    lo, hi = newcombe_paired(0, 5, 5, 0)
    assert lo == pytest.approx(-math.sqrt((0.5 - l1) ** 2 - 2 * phi * (0.5 - l1) * (u2 - 0.5) + (u2 - 0.5) ** 2))
    assert hi == pytest.approx(-lo)


def test_paired_table():
    x = [True, True, False, False, True]
    y = [True, False, True, False, False]
    assert paired_table(x, y) == (1, 2, 1, 1)


def test_paired_bootstrap_against_exact_enumeration_of_a_four_problem_case():
    x, y = [1, 1, 0, 1], [0, 0, 0, 1]  # per-problem differences 1, 1, 0, 0: the mean resampled is k/4
    diffs = [a - b for a, b in zip(x, y)]
    exact = sorted(sum(diffs[i] for i in idx) / 4 for idx in itertools.product(range(4), repeat=4))  # 256
    assert len(exact) == 256
    # exact distribution: k of the 4 draws hit a difference 1, k ~ Bin(4, 1/2): 1, 4, 6, 4, 1 of 16
    assert [exact.count(k / 4) for k in range(5)] == [16, 64, 96, 64, 16]
    # the 2.5 % / 97.5 % points of the exact distribution: CDF 1/16 = .0625 >= .025 at 0; 15/16 < .975 at .75
    assert (quantile(exact, 0.025), quantile(exact, 0.975)) == (0.0, 1.0)
    assert paired_bootstrap(x, y, resamples=10_000, seed=0) == (0.0, 1.0)
    # at the 80 % level: .1 -> CDF(.25) = 5/16 >= .1 > 1/16; .9 -> CDF(.75) = 15/16 >= .9 > 11/16
    assert (quantile(exact, 0.1), quantile(exact, 0.9)) == (0.25, 0.75)
    assert paired_bootstrap(x, y, resamples=10_000, seed=0, level=0.8) == (0.25, 0.75)
    # the same seed gives the same interval; the resampled distribution is close to the exact one
    assert paired_bootstrap(x, y, seed=3) == paired_bootstrap(x, y, seed=3)


def test_mcnemar_exact_hand_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 1) == 2 * (1 + 4) / 16  # P(X <= 1), X ~ Bin(4, 1/2), doubled
    assert mcnemar_exact(1, 3) == mcnemar_exact(3, 1)
    assert mcnemar_exact(10, 0) == 2 / 1024
    assert mcnemar_exact(5, 5) == 1.0  # doubled tail above 1 is capped
    assert mcnemar_exact(12, 3) == pytest.approx(2 * sum(math.comb(15, i) for i in range(4)) / 2 ** 15)
