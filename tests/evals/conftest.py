"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest

from abstopk_eval.evals import pooled
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.knowledge import knowledge_adapter, tiny_fact_domains


@pytest.fixture(autouse=True)
def fresh_pooled_cache():
    """Each test starts and ends with an empty pooled-activation memo (tests reuse dataset names and adapters)."""
    pooled.clear_pooled_cache()
    yield
    pooled.clear_pooled_cache()


@pytest.fixture(scope="module")
def knowledge_model() -> ModelAdapter:
    """The tiny model that knows facts (RAVEL and unlearning tests)."""
    return knowledge_adapter()


@pytest.fixture(scope="module")
def knowledge_facts(knowledge_model):
    """Tiny entity types and fact domains, registered for the module's tests and removed afterwards."""
    with tiny_fact_domains(knowledge_model):
        yield
