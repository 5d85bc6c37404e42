"""Statistics of a many-seed comparison: intervals over seeds, and differences paired by seed and by problem.

Pure functions on floats; no I/O. Conventions: ``confidence`` is two-sided (0.95 -> a 95% interval);
standard deviations are sample ones (divide by n - 1); intervals use Student's t, because a comparison has a
handful of seeds and the normal quantile (1.96) would understate the spread of 3 to 10 values.

Two sources of noise separate two trained variants on a held-out set: the training seed (a run is one draw
of sampling, data order and initialization) and the problems (the held-out set is one draw of "problems like
these"). ``crossed_mean_interval`` accounts for both with the standard two-way random-effects decomposition
of a seeds x problems table of paired differences. What this is not: reading runs (``gtpo.compare.report``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval; ``lo``/``hi`` are None when one value cannot give a spread."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    """How many independent units the interval rests on (seeds, or problems when there is one seed)."""

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``df`` >= 1 (closed-form series in theta = atan(t/sqrt(df))).

    df odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), up to cos^(df-3);
    df even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), up to cos^(df-2) (Abramowitz & Stegun 26.7.3-4).
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df}")
    if t < 0:
        raise ValueError(f"t must be >= 0 (two-sided probability), got {t}")
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return sin * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = 1.0
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * cos2
        total += term
    return 2 / math.pi * (theta + sin * math.cos(theta) * total)


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = ``confidence`` (e.g. 0.95, df 4 -> 2.776), by bisection on the CDF."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    low, high = 0.0, 1.0
    while t_cdf_two_sided(high, df) < confidence:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        if t_cdf_two_sided(middle, df) < confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """``mean +- t(confidence, n - 1) * sd / sqrt(n)``; one value gives the mean without an interval."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, None, None, 1)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile(confidence, n - 1) * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half, n)


def clipped(interval: Interval, low: float | None, high: float | None) -> Interval:
    """``interval`` with its ends kept within what the quantity can take (a proportion: [0, 1]; a difference of
    two: [-1, 1]). Student's t around the mean of a few proportions can reach below 0 or above 1; those ends
    claim values no run can have, so they are cut at the bound (the mean is within it already)."""
    if interval.lo is None or interval.hi is None:
        return interval
    lo = interval.lo if low is None else max(low, interval.lo)
    hi = interval.hi if high is None else min(high, interval.hi)
    return Interval(interval.mean, lo, hi, interval.n)


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval of mean(a - b) over paired units (seeds: the same seed's run of each variant)."""
    if len(a) != len(b):
        raise ValueError(f"paired values must have the same length, got {len(a)} and {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b, strict=True)], confidence)


def crossed_mean_interval(table: Sequence[Sequence[float]], confidence: float = 0.95) -> Interval:
    """Interval of the mean of a seeds x problems table (here: paired differences between two variants).

    Model: d[s][p] = mu + seed effect + problem effect + residual, all independent. With S seeds and N problems
    the mean's variance is var_seed / S + var_problem / N + var_residual / (S N), estimated from the two-way
    ANOVA mean squares:

        MS_seed = N * sum_s (row mean_s - grand)^2 / (S - 1)
        MS_problem = S * sum_p (column mean_p - grand)^2 / (N - 1)
        MS_residual = sum (d - row mean - column mean + grand)^2 / ((S - 1)(N - 1))
        var_residual = MS_residual, var_seed = max(0, (MS_seed - MS_residual) / N),
        var_problem = max(0, (MS_problem - MS_residual) / S)

    (a negative component estimate is set to 0). The interval uses t with S - 1 degrees of freedom: seeds are
    the scarce unit, and fewer degrees of freedom can only widen it. With one seed the table is one row and
    the interval is over problems (t with N - 1 df); with one problem it is over seeds.
    """
    s = len(table)
    if s == 0 or any(len(row) != len(table[0]) for row in table) or not table[0]:
        raise ValueError("crossed_mean_interval needs a non-empty rectangular seeds x problems table")
    n = len(table[0])
    if s == 1:
        return mean_interval(table[0], confidence)
    if n == 1:
        return mean_interval([row[0] for row in table], confidence)
    grand = sum(sum(row) for row in table) / (s * n)
    rows = [sum(row) / n for row in table]
    columns = [sum(table[i][j] for i in range(s)) / s for j in range(n)]
    ms_seed = n * sum((r - grand) ** 2 for r in rows) / (s - 1)
    ms_problem = s * sum((c - grand) ** 2 for c in columns) / (n - 1)
    residual = sum((table[i][j] - rows[i] - columns[j] + grand) ** 2 for i in range(s) for j in range(n))
    ms_residual = residual / ((s - 1) * (n - 1))
    var_seed = max(0.0, (ms_seed - ms_residual) / n)
    var_problem = max(0.0, (ms_problem - ms_residual) / s)
    variance = var_seed / s + var_problem / n + ms_residual / (s * n)
    half = t_quantile(confidence, s - 1) * math.sqrt(variance)
    return Interval(grand, grand - half, grand + half, s)


def curve_area(steps: Sequence[float], values: Sequence[float]) -> float:
    """Area under a curve (trapezoids) divided by its step range: the curve's mean level over training.

    In accuracy units, so a variant that learns sooner scores higher even when the final values tie; one
    point gives that value.
    """
    if len(steps) != len(values) or not steps:
        raise ValueError(f"need matching, non-empty steps and values, got {len(steps)} and {len(values)}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"steps must increase, got {list(steps)}")
    if len(steps) == 1:
        return float(values[0])
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(steps, steps[1:], values, values[1:], strict=False))
    return area / (steps[-1] - steps[0])
