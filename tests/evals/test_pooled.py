"""Pooled activations (what sparse probing, SCR and TPP read): BOS and padding left out, ablation equal to the
mean of per-token ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abstopk_eval.evals.pooled import ablate, decoder_rows, pooled_activations
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.context import make_eval_context
from tests.helpers.models import tiny_llama
from tests.helpers.saes import random_sae


@pytest.fixture(scope="module")
def adapter():
    return ModelAdapter(*tiny_llama())


def test_pooled_ablation_equals_mean_of_per_token_ablation(adapter):
    sae = random_sae("abstopk")
    texts = ["abcdefgh", "hello world!", "xyz"]
    ctx = make_eval_context(adapter, layer=1)
    pooled = pooled_activations(ctx, {"s": sae}, texts, dataset="t", seed=0, context_length=16)
    rows = decoder_rows(sae)
    S = np.array([3, 7, 11])
    got = ablate(pooled.model.double().numpy(), pooled.latents["s"].double().numpy(), rows, S)
    tok = adapter.tokenizer
    torch.set_grad_enabled(False)
    try:
        _check_per_token(adapter, sae, texts, tok, S, got, pooled)
    finally:
        torch.set_grad_enabled(True)


def _check_per_token(adapter, sae, texts, tok, S, got, pooled):
    for i, text in enumerate(texts):
        ids = torch.tensor([tok.encode(text)])
        x = adapter.activations(ids, 1)[0, 1:]  # BOS excluded
        z = sae.encode(x)
        keep = z.clone()
        keep[:, S] = 0
        x_abl = x - (sae.decode(z) - sae.decode(keep))
        assert np.allclose(got[i], x_abl.mean(0).double().numpy(), atol=1e-5)
        assert np.allclose(pooled.latents["s"][i].numpy(), z.mean(0).numpy(), atol=1e-5)


def test_padding_and_bos_are_not_pooled(adapter):
    sae = random_sae("topk", seed=1)
    short, long = "abc", "abcdefghijklmnopqrstuvwx"
    ctx = make_eval_context(adapter, layer=1)
    together = pooled_activations(ctx, {"s": sae}, [short, long], dataset="pad", seed=0, context_length=64)
    alone = pooled_activations(ctx, {"s": sae}, [short], dataset="pad-alone", seed=0, context_length=64)
    assert together.n_tokens.tolist() == [3, 24]
    assert torch.allclose(together.model[0], alone.model[0], atol=1e-5)
    assert torch.allclose(together.latents["s"][0], alone.latents["s"][0], atol=1e-5)
