"""Session-wide fixtures: tiny random models saved like local model copies, and the registered `tiny-test` spec.

The builders behind them, and every other shared test helper, live in `tests.helpers`.
"""

from __future__ import annotations

import pytest

from abstopk_eval.models.registry import MODEL_REGISTRY, ModelSpec
from tests.helpers.models import TINY, TinyModelFolders


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> TinyModelFolders:
    """family -> a `save_pretrained` folder of that family's tiny model and tokenizer, each saved once per session."""
    return TinyModelFolders(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dirs):
    """The tiny Llama's folder: what runs use as `--model tiny-test --model-path <tiny_model_dir>`."""
    return tiny_model_dirs["llama"]


@pytest.fixture
def tiny_registered(monkeypatch) -> ModelSpec:
    """`TINY` registered as model `tiny-test` for one test."""
    monkeypatch.setitem(MODEL_REGISTRY, TINY.key, TINY)
    return TINY
