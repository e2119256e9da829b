"""Two independent samples compared without assuming equal variances: Welch's t, its Welch-Satterthwaite degrees of
freedom and the confidence interval of the difference of the means (Student's t quantile, from scipy)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Summary:
    """A sample's size, mean and sample standard deviation (n - 1 in the denominator; None below 2 values)."""

    n: int
    mean: float | None
    std: float | None


def summarize(values: Sequence[float]) -> Summary:
    """Size, mean and sample std of `values` (mean None when empty, std None below 2 values)."""
    n = len(values)
    return Summary(
        n,
        statistics.fmean(values) if n else None,
        statistics.stdev(values) if n >= 2 else None,
    )


@dataclasses.dataclass(frozen=True)
class WelchInterval:
    """mean(a) - mean(b) with its `level` confidence interval [low, high], Welch's t and its degrees of freedom.
    With no spread on either side the interval is the difference itself and `t`, `df` are None."""

    difference: float
    low: float
    high: float
    t: float | None
    df: float | None
    level: float


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> WelchInterval | None:
    """Welch's comparison of the means of `a` and `b` (None unless each has at least 2 values)."""
    from scipy.stats import t as student_t

    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = summarize(a), summarize(b)
    assert sa.mean is not None and sb.mean is not None and sa.std is not None and sb.std is not None
    diff = sa.mean - sb.mean
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n  # squared standard errors of the two means
    if va + vb == 0:
        return WelchInterval(diff, diff, diff, None, None, level)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))  # Welch-Satterthwaite
    half = float(student_t.ppf(0.5 + level / 2, df)) * se
    return WelchInterval(diff, diff - half, diff + half, diff / se, df, level)
