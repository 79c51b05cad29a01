"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest

from abstopk_eval.evals import pooled


@pytest.fixture(autouse=True)
def fresh_pooled_cache():
    """Each test starts and ends with an empty pooled-activation memo (tests reuse dataset names and adapters)."""
    pooled.clear_pooled_cache()
    yield
    pooled.clear_pooled_cache()
