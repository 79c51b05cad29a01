"""Training from streamed activations through `python -m abstopk_eval.run` on the tiny model: a budget of 4x the
cache trains on 4x the unique tokens; repeating data more than `runtime.MAX_EPOCHS` times is refused."""

from __future__ import annotations

import json

import pytest

from abstopk_eval import run
from abstopk_eval.config import get_preset
from abstopk_eval.models.registry import MODEL_REGISTRY
from tests.helpers.models import TINY
from tests.helpers.runs import sae_folder

CACHE_TOKENS = get_preset("smoke").cache_tokens  # 2,048


def _argv(tmp, model_dir, *extra):
    return ["--model", TINY.key, "--model-path", str(model_dir), "--preset", "smoke", "-q", "--no-report",
            "--variants", "topk", "--evals", "core", "--results-dir", str(tmp / "results"),
            "--runs-dir", str(tmp / "runs"), "--reports-dir", str(tmp / "reports"), "--cache-dir", str(tmp / "cache"),
            *extra]  # fmt: skip


def _training(tmp, sae="topk_k4_s0_smoke") -> dict:
    return json.loads((sae_folder(tmp / "runs", TINY.key, 1, sae) / "training.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """A cached run at the smoke budget and a streamed run at 4x that budget, in one runs dir."""
    MODEL_REGISTRY[TINY.key] = TINY
    tmp = tmp_path_factory.mktemp("stream")
    run.main(_argv(tmp, tiny_model_dir))
    cached = _training(tmp)
    run.main(_argv(tmp / "s", tiny_model_dir, "--train-tokens", str(4 * CACHE_TOKENS)))
    yield cached, _training(tmp / "s"), tmp
    MODEL_REGISTRY.pop(TINY.key, None)


def test_four_times_the_cache_budget_trains_on_four_times_the_unique_tokens(runs):
    cached, streamed, _ = runs
    assert cached["activations"]["source"] == "cache" and streamed["activations"]["source"] == "stream"
    cache_rows = cached["unique_tokens"]
    assert cache_rows <= CACHE_TOKENS and cached["epochs"] == pytest.approx(cached["train_tokens"] / cache_rows)
    assert streamed["train_tokens"] == 4 * CACHE_TOKENS == streamed["tokens"]
    assert 4 * cache_rows <= streamed["unique_tokens"] <= 4 * CACHE_TOKENS + TINY.context_size
    assert streamed["epochs"] <= 1.0  # every streamed token seen once
    assert streamed["train_corpus"]["n_sequences"] >= 4 * cached["train_corpus"]["n_sequences"]


def test_streamed_and_cached_runs_have_their_own_identity(runs):
    _, _, tmp = runs
    cached_id = json.loads((sae_folder(tmp / "runs", TINY.key, 1, "topk_k4_s0_smoke") / "identity.json").read_text())
    streamed_id = json.loads(
        (sae_folder(tmp / "s" / "runs", TINY.key, 1, "topk_k4_s0_smoke") / "identity.json").read_text()
    )
    assert "activations" not in cached_id  # the cache path keeps the identities it had
    assert streamed_id["activations"]["source"] == "stream" and streamed_id["activations"]["epochs"] == 1


def test_epochs_repeat_the_streamed_tokens(tiny_model_dir, tiny_registered, tmp_path):
    run.main(_argv(tmp_path, tiny_model_dir, "--stream", "--train-tokens", str(4 * CACHE_TOKENS), "--epochs", "2"))
    info = _training(tmp_path)
    assert info["epochs"] == pytest.approx(2.0, rel=0.05)
    assert info["unique_tokens"] == pytest.approx(2 * CACHE_TOKENS, rel=0.05)


def test_more_than_four_passes_over_a_cache_stop_before_work(tiny_model_dir, tiny_registered, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(_argv(tmp_path, tiny_model_dir, "--from-cache", "--train-tokens", str(5 * CACHE_TOKENS)))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert "repeats the data" in err and "--allow-repeats" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_stream_over_a_too_small_corpus_stops_before_the_model_runs(
    tiny_model_dir, tiny_registered, tmp_path, capsys, monkeypatch
):
    from abstopk_eval.data import activation_stream

    def never(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(activation_stream.ActivationStream, "__init__", never)
    with pytest.raises(SystemExit):  # wiki-en is ~4.8M tokens of the tiny character tokenizer: 40M repeat it ~8x
        run.main(_argv(tmp_path, tiny_model_dir, "--stream", "--train-tokens", "40000000"))
    assert "repeats the data" in capsys.readouterr().err


@pytest.mark.parametrize("hub, preset, expected", [(True, "paper", "pile"), (False, "paper", "wiki-en"),
                                                   (True, "quick", "wiki-en")])  # fmt: skip
def test_the_paper_preset_takes_the_pile_where_the_hub_is_reachable(hub, preset, expected, monkeypatch):
    from abstopk_eval import cli

    monkeypatch.setattr(cli, "corpus_readable", lambda name: hub)
    assert cli.resolve_corpus(None, get_preset(preset)) == expected
    assert cli.resolve_corpus("python-stdlib", get_preset(preset)) == "python-stdlib"  # an explicit choice wins
