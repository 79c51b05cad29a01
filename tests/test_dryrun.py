"""`--dry-run`: the plan and its estimated cost from shapes alone; nothing large is loaded."""

from __future__ import annotations

import pytest

from abstopk_eval import run
from abstopk_eval.models import loading
from abstopk_eval.models.shapes import PUBLISHED, model_shape
from tests.helpers.models import D_MODEL, N_LAYERS, TINY


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or resolve its weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded something")

    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(loading, "weights_identity", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _dry(capsys, *argv) -> str:
    run.main([*argv, "--dry-run"])
    return capsys.readouterr().out


def test_paper_qwen_streams_each_token_once_on_a_planned_gpu(no_loading, capsys):
    out = _dry(
        capsys, "--model", "qwen3-4b", "--layer", "18", "--preset", "paper", "--device", "cuda", "--corpus", "pile"
    )
    assert "d_model 2560, 36 layers, vocab 151,936" in out
    assert "activations: stream; unique tokens 122.9M, 1.00 epoch(s)" in out
    assert "SAEs to train (6)" in out and "abstopk_k256_s0_paper" in out
    assert "computes in bfloat16, TF32 matmuls" in out
    assert "would stop" not in out
    # planning for a GPU and the hub from a machine without them is noted, not refused
    assert "note: not available here: device cuda" in out


def test_paper_from_cache_shows_cache_size_and_the_repeat_stop(no_loading, capsys):
    out = _dry(capsys, "--model", "gemma-2-2b", "--preset", "paper", "--from-cache", "--corpus", "pile")
    rows = 2_000_000 * 1023 / 1024
    assert f"disk {rows * 2304 * 4 / 1e9:,.1f} GB" in out
    assert "repeats the data 61.4 times" in out and "would stop" in out
    half = _dry(capsys, "--model", "gemma-2-2b", "--preset", "paper", "--from-cache", "--corpus", "pile",
                "--cache-dtype", "bfloat16")  # fmt: skip
    assert f"disk {rows * 2304 * 2 / 1e9:,.1f} GB" in half


def test_paper_offline_corpus_would_stop_for_repeats(no_loading, capsys):
    out = _dry(capsys, "--model", "qwen3-4b", "--preset", "paper", "--corpus", "wiki-en")
    assert "122.88 epoch(s)" in out and "would stop" in out
    assert "would stop" not in _dry(capsys, "--model", "qwen3-4b", "--preset", "paper", "--corpus", "wiki-en",
                                    "--allow-repeats")  # fmt: skip


def test_local_config_gives_the_shapes(tiny_model_dir):
    shape = model_shape(TINY, tiny_model_dir)
    assert (shape.d_model, shape.n_layers) == (D_MODEL, N_LAYERS) and str(tiny_model_dir) in shape.source
    assert model_shape(TINY).source.startswith("registry")  # no config, no published entry


def test_published_shapes_agree_with_the_registry():
    from abstopk_eval.models.registry import MODEL_REGISTRY

    for key, shape in PUBLISHED.items():
        spec = MODEL_REGISTRY[key]
        assert (shape.d_model, shape.n_layers) == (spec.d_model, spec.n_layers), key
