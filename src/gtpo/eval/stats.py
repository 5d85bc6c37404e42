"""Evaluation statistics: pass@k, avg@k, and confidence intervals that respect how evals are sampled.

Pure functions on correctness flags; no I/O, no model. Conventions: ``correct[i][j]`` is whether sample ``j``
of problem ``i`` was graded correct; problems are the unit of sampling.

Why intervals are *clustered by problem*: the k samples of one problem are not independent draws (a problem is
easy or hard for the model), so treating N*k samples as N*k coin flips understates the error. The uncertainty
that matters when a benchmark stands for "problems like these" is the spread *between problems*, so the
standard error is that of the N per-problem accuracies (the clustered standard error recommended for LLM
evals, e.g. Miller 2024, "Adding Error Bars to Evals"). Likewise two runs on the same problems are compared
through per-problem differences (a paired test), which removes the shared problem difficulty from the noise.

What this is not: the evaluation loop (``gtpo.eval.evaluate``) or metric logging (``gtpo.run.metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

CorrectMatrix = Sequence[Sequence[bool]]
"""``correct[i][j]``: sample j of problem i was correct. Rows may differ in length."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``.

    The probability that k samples drawn without replacement from the n include a correct one (Chen et al.
    2021). Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms the huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n (k samples out of n drawn), got n={n}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    no_correct = 1.0
    for i in range(n - c + 1, n + 1):
        no_correct *= 1.0 - k / i
    return 1.0 - no_correct


def mean_pass_at_k(samples: CorrectMatrix | Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems; ``samples`` is a correctness matrix or one ``(n, c)`` per problem."""
    counts = [_n_c(row) for row in samples]
    if not counts:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def per_problem_accuracy(correct: CorrectMatrix) -> list[float]:
    """Each problem's fraction of correct samples."""
    if not correct:
        raise ValueError("need at least one problem")
    for i, row in enumerate(correct):
        if len(row) == 0:
            raise ValueError(f"problem {i} has no samples")
    return [sum(bool(x) for x in row) / len(row) for row in correct]


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and has non-zero width at 0 or n successes,
    which is why it is the fallback when the clustered standard error degenerates. ``successes`` may be
    fractional (a mean of per-problem accuracies times the number of problems).
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need n > 0 and 0 <= successes <= n, got successes={successes}, n={n}")
    z = _z(confidence)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_interval(correct: CorrectMatrix, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(avg@k, lo, hi)``: a confidence interval for accuracy, clustered by problem.

    With N >= 2 problems whose accuracies differ: ``mean +- z * sd(p_i) / sqrt(N)`` (sample sd, ddof=1),
    clipped to [0, 1]. When that standard error is zero or undefined (one problem, or every problem at the
    same accuracy, e.g. all solved or none) the normal interval collapses to a point, so the Wilson interval
    is used with the number of problems as n: each problem counts as one trial, the conservative effective
    sample size when samples within a problem may be perfectly correlated.
    """
    accs = per_problem_accuracy(correct)
    mean = _mean(accs)
    se = _standard_error(accs)
    if se == 0.0:
        lo, hi = wilson_interval(mean * len(accs), len(accs), confidence)
        return mean, lo, hi
    half = _z(confidence) * se
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: a normal confidence interval for the mean of per-problem values (an environment's mean
    return over each problem's k samples), ``mean +- z * sd / sqrt(N)``; a point when N < 2 or all are equal."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    mean = _mean(values)
    half = _z(confidence) * _standard_error(values)
    return mean, mean - half, mean + half


def paired_difference(
    a_per_problem: Sequence[float] | CorrectMatrix,
    b_per_problem: Sequence[float] | CorrectMatrix,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(mean(a - b), lo, hi)`` for two runs on the same problems, in the same order.

    Inputs are per-problem accuracies, or correctness matrices (reduced to per-problem accuracies). The
    interval is ``mean(d) +- z * sd(d) / sqrt(N)`` over the per-problem differences ``d_i = a_i - b_i``.
    An interval that excludes 0 is evidence that the runs differ. A zero-width interval means every
    problem moved by exactly the same amount (e.g. identical runs), not certainty about unseen problems.
    """
    a, b = _accuracies(a_per_problem), _accuracies(b_per_problem)
    if len(a) != len(b):
        raise ValueError(f"paired runs must cover the same problems: got {len(a)} and {len(b)} problems")
    if len(a) < 2:
        raise ValueError("paired_difference needs at least 2 problems to estimate the spread of differences")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = _mean(diffs)
    half = _z(confidence) * _standard_error(diffs)
    return mean, max(-1.0, mean - half), min(1.0, mean + half)


def _accuracies(values: Sequence[float] | CorrectMatrix) -> list[float]:
    if values and isinstance(values[0], Sequence):
        return per_problem_accuracy(values)  # type: ignore[arg-type]
    return [float(v) for v in values]  # type: ignore[arg-type]


def _n_c(row: Sequence[bool] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(row, tuple) and len(row) == 2 and all(type(x) is int for x in row):
        return row[0], row[1]
    return len(row), sum(bool(x) for x in row)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean, sd(ddof=1) / sqrt(N); 0.0 when N < 2 (undefined)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = _mean(values)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)
