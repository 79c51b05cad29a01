"""The task probes of SCR and TPP: sae_bench's recipe, deterministic per seed, and the sklearn alternative."""

from __future__ import annotations

import numpy as np
import pytest

from abstopk_eval.errors import UserError
from abstopk_eval.evals.tpp.eval_config import TppEvalConfig


def test_sae_bench_probe_recipe_is_sae_bench_probe_and_deterministic():
    from abstopk_eval.evals.probes import fit_task_probe

    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    y = rng.integers(0, 2, size=200)
    x = rng.normal(size=(200, 16)) + np.outer(2 * y - 1, direction)
    cfg = TppEvalConfig()
    probe = fit_task_probe(x[:150], y[:150], x[150:], y[150:], cfg, seed=5)
    assert probe.accuracy(x[150:], y[150:]) > 0.9
    again = fit_task_probe(x[:150], y[:150], x[150:], y[150:], cfg, seed=5)
    np.testing.assert_array_equal(probe.weight, again.weight)  # every SAE is scored against the same probe
    sklearn_probe = fit_task_probe(x[:150], y[:150], x[150:], y[150:], TppEvalConfig(probe_recipe="sklearn"), seed=5)
    assert not np.allclose(probe.weight, sklearn_probe.weight)
    with pytest.raises(UserError, match="probe_recipe"):
        fit_task_probe(x[:150], y[:150], x[150:], y[150:], TppEvalConfig(probe_recipe="svm"), seed=5)
