"""The one seed-interval rule of the reports, the paper tables and the synthetic benchmark."""

from __future__ import annotations

import pytest

from abstopk_eval.intervals import SeedInterval, seed_interval
from abstopk_eval.synthetic import mean_and_interval


def test_seed_interval_is_the_student_t_interval_over_seeds():
    three = seed_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302652729911275, sample std 1, sqrt(3)
    assert three.mean == 2.0 and three.n == 3
    assert three.half_width == pytest.approx(4.302652729911275 / 3**0.5)
    assert (three.low, three.high) == pytest.approx((2.0 - three.half_width, 2.0 + three.half_width))
    one = seed_interval([0.5, float("nan"), None])
    assert (one.mean, one.half_width, one.n, one.low) == (0.5, None, 1, None)
    assert seed_interval([]) == seed_interval([float("nan")]) == SeedInterval(None, None, 0)


def test_synthetic_benchmark_summary_uses_the_same_interval():
    assert mean_and_interval([1.0, 2.0, 3.0]) == {
        "mean": 2.0,
        "ci95": seed_interval([1.0, 2.0, 3.0]).half_width,
        "n": 3,
    }
    single = mean_and_interval([4.0])
    assert single["mean"] == 4.0 and single["ci95"] != single["ci95"] and single["n"] == 1  # nan width
