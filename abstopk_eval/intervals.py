"""The mean over training seeds and its 95% t-interval: the one rule the reports, the paper tables and the
synthetic benchmark share, and the Wilson interval of a proportion (a judge's accuracy on labelled responses).
(Intervals over evaluation examples are bootstraps: `abstopk_eval.evals.bootstrap`.)"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

T_QUANTILE = 0.975
"""Two-sided 95%."""


@dataclass(frozen=True)
class SeedInterval:
    mean: float | None
    """None without any (non-NaN) value."""
    half_width: float | None
    """Half-width of the 95% t-interval; None with fewer than two values (one seed says nothing about seeds)."""
    n: int
    """Number of values used (NaNs dropped)."""

    @property
    def low(self) -> float | None:
        return None if self.mean is None or self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.mean is None or self.half_width is None else self.mean + self.half_width


def seed_interval(values: Iterable[float | None]) -> SeedInterval:
    """Mean and Student-t 95% interval (t_{0.975, n-1} * sample std / sqrt(n)) of one metric over seeds; missing
    values (None, NaN) are dropped."""
    from scipy import stats  # slow to import; only reports need it

    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return SeedInterval(None, None, 0)
    mean = float(arr.mean())
    if arr.size < 2:
        return SeedInterval(mean, None, 1)
    half = float(stats.t.ppf(T_QUANTILE, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return SeedInterval(mean, half, int(arr.size))


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `successes / n` (statsmodels' `proportion_confint`); it stays
    inside [0, 1] and keeps a sensible width at 0 or n successes, where the normal interval collapses."""
    if n <= 0:
        return (float("nan"), float("nan"))
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(int(successes), int(n), alpha=0.05, method="wilson")
    return (float(low), float(high))
