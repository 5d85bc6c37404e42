"""gtpo.eval.stats: every expected number is written as the arithmetic that produces it."""

from __future__ import annotations

import math

import pytest

from gtpo.eval.stats import (
    accuracy_interval,
    mean_pass_at_k,
    paired_difference,
    pass_at_k,
    wilson_interval,
)

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
T, F = True, False


def test_pass_at_k_hand_computed() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 2, 5) == pytest.approx(1 - 56 / 252)  # 1 - C(8,5)/C(10,5)
    assert pass_at_k(10, 3, 1) == pytest.approx(3 / 10)  # pass@1 is the fraction correct
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples: any 3 include a correct one
    assert pass_at_k(1000, 1, 500) == pytest.approx(1 - 500 / 1000)  # C(999,500)/C(1000,500) = 500/1000


def test_pass_at_k_matches_the_binomial_formula() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_stays_finite_where_binomials_overflow_floats() -> None:
    # C(4000, 2000) is ~10^1202, beyond float range; the product form never forms it.
    assert pass_at_k(4000, 1, 2000) == pytest.approx(1 - 2000 / 4000)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_from_flags_or_counts() -> None:
    matrix = [[T, F, F, F], [F, F, F, F], [T, T, F, F]]
    expected = (1 / 4 + 0 + 2 / 4) / 3
    assert mean_pass_at_k(matrix, 1) == pytest.approx(expected)
    assert mean_pass_at_k([(4, 1), (4, 0), (4, 2)], 1) == pytest.approx(expected)
    # pass@2: 1 - C(3,2)/C(4,2) = 1/2, 0, 1 - C(2,2)/C(4,2) = 5/6
    assert mean_pass_at_k(matrix, 2) == pytest.approx((1 / 2 + 0 + 5 / 6) / 3)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_wilson_interval_hand_computed() -> None:
    lo, hi = wilson_interval(0, 10)
    assert (lo, hi) == (pytest.approx(0.0, abs=1e-12), pytest.approx(Z95**2 / (10 + Z95**2)))
    lo, hi = wilson_interval(5, 10)
    half = Z95 / (1 + Z95**2 / 10) * math.sqrt(0.5 * 0.5 / 10 + Z95**2 / 400)
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_accuracy_interval_is_clustered_by_problem() -> None:
    correct = [[T, T, T, T], [T, T, T, F], [T, T, F, F], [T, T, T, F]]  # accuracies 1, .75, .5, .75
    mean, lo, hi = accuracy_interval(correct)
    se = math.sqrt((0.25**2 + 0 + 0.25**2 + 0) / 3 / 4)  # sd(ddof=1) / sqrt(4 problems)
    assert mean == pytest.approx(0.75)
    assert (lo, hi) == (pytest.approx(0.75 - Z95 * se), pytest.approx(0.75 + Z95 * se))


def test_correlated_samples_get_a_wider_interval_than_independent_ones() -> None:
    # Each problem all right or all wrong: 8 samples per problem carry the information of one.
    correct = [[T] * 8, [F] * 8, [T] * 8, [F] * 8, [T] * 8, [F] * 8]
    mean, lo, hi = accuracy_interval(correct)
    naive_half = Z95 * math.sqrt(0.5 * 0.5 / 48)  # treating the 48 samples as independent
    assert mean == 0.5
    assert hi - lo > 2 * naive_half


def test_accuracy_interval_falls_back_to_wilson_when_degenerate() -> None:
    # Every problem solved: zero spread, so Wilson with n = 3 problems: [3 / (3 + z^2), 1].
    mean, lo, hi = accuracy_interval([[T, T], [T, T], [T, T]])
    assert (mean, lo, hi) == (1.0, pytest.approx(3 / (3 + Z95**2)), 1.0)
    # One problem: spread undefined; Wilson with n = 1 at p = 1/2 has half-width z / (2 sqrt(1 + z^2)).
    mean, lo, hi = accuracy_interval([[T, F]])
    half = Z95 / (2 * math.sqrt(1 + Z95**2))
    assert (mean, lo, hi) == (0.5, pytest.approx(0.5 - half), pytest.approx(0.5 + half))


def test_accuracy_interval_other_confidence_levels() -> None:
    correct = [[T, T, T, T], [T, T, T, F], [T, T, F, F], [T, T, T, F]]
    _, lo90, hi90 = accuracy_interval(correct, confidence=0.90)
    _, lo95, hi95 = accuracy_interval(correct)
    assert lo95 < lo90 < hi90 < hi95
    with pytest.raises(ValueError, match="confidence"):
        accuracy_interval(correct, confidence=95)


def test_paired_difference_hand_computed() -> None:
    a, b = [1.0, 0.5, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0]  # differences .5, 0, 1, 0 with mean .375
    diff, lo, hi = paired_difference(a, b)
    se = math.sqrt((0.125**2 + 0.375**2 + 0.625**2 + 0.375**2) / 3 / 4)
    assert diff == pytest.approx(0.375)
    assert (lo, hi) == (pytest.approx(0.375 - Z95 * se), pytest.approx(0.375 + Z95 * se))


def test_paired_difference_accepts_correctness_matrices() -> None:
    a = [[T, T], [T, F], [T, T], [F, F]]
    b = [[T, F], [F, T], [F, F], [F, F]]
    assert paired_difference(a, b) == pytest.approx(paired_difference([1, 0.5, 1, 0], [0.5, 0.5, 0, 0]))


def test_pairing_removes_shared_problem_difficulty() -> None:
    a, b = [1.0, 0.75, 0.25, 0.0], [0.75, 0.5, 0.0, 0.0]
    diff, lo, hi = paired_difference(a, b)
    _, a_lo, a_hi = accuracy_interval([[T] * 4, [T, T, T, F], [T, F, F, F], [F] * 4])
    assert diff == pytest.approx(0.1875)
    assert hi - lo < a_hi - a_lo  # narrower than the uncertainty of either run alone
    assert lo > 0  # a consistent gain shows despite problems ranging from easy to impossible


def test_paired_difference_rejects_unpaired_or_tiny_inputs() -> None:
    with pytest.raises(ValueError, match="same problems"):
        paired_difference([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 problems"):
        paired_difference([1.0], [0.0])
