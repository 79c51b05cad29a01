"""The sparse ReLU / JumpReLU training path equals sae_lens's dense training_forward_pass."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from abstopk_eval.saes.variants import SparsityHyperparams, get_variant
from abstopk_eval.training import sparse_threshold
from abstopk_eval.training.sparse_threshold import sparse_threshold_forward, supports_sparse_threshold

D_IN, D_SAE, B = 16, 96, 40


def _sae(variant: str, mode: str = "step", ste_to_input: bool = True, x: torch.Tensor | None = None):
    torch.manual_seed(0)
    hp = SparsityHyperparams(
        k=6,
        l1_coefficient=0.7,
        l0_coefficient=0.3,
        jumprelu_bandwidth=0.5,
        jumprelu_init_threshold=0.4,
        jumprelu_sparsity_loss_mode=mode,
        jumprelu_ste_to_input=ste_to_input,
    )
    sae = get_variant(variant).build(D_IN, D_SAE, hp)
    with torch.no_grad():  # sparse but not empty: negative biases, uneven decoder norms
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 2 + 0.5)
        sae.b_dec.normal_(0, 0.1)
        if x is not None:  # each latent fires on ~15% of the tokens
            sae.b_enc.copy_(-((x - sae.b_dec) @ sae.W_enc).quantile(0.85, dim=0))
        if variant == "jumprelu":
            sae.threshold.uniform_(0.0, 0.3)
    return sae


def _grads(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "variant,mode,ste",
    [("relu", "step", True), ("jumprelu", "step", True), ("jumprelu", "step", False), ("jumprelu", "quadratic", True)],
)
def test_sparse_threshold_step_matches_sae_lens_dense_step(variant, mode, ste, monkeypatch):
    monkeypatch.setattr(sparse_threshold, "MAX_SUPPORT_DENSITY", 1.0)
    x = torch.randn(B, D_IN) * 2
    sae = _sae(variant, mode, ste, x)
    assert supports_sparse_threshold(sae)
    coefficients = {"l1": 0.7, "l0": 0.3}
    dense = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
        )
    )
    dense_grads = _grads(sae, dense.loss)
    sparse = sparse_threshold_forward(sae, x, coefficients)
    sparse_grads = _grads(sae, sparse.loss)
    assert 0 < sparse.active.rows.numel() < 0.5 * B * D_SAE  # the test exercises a genuinely sparse support
    if variant == "jumprelu":  # some support pairs sit in the estimator window below the threshold
        assert (sparse.values == 0).any()
    assert torch.allclose(sparse.loss, dense.loss, rtol=1e-5)
    assert torch.allclose(sparse.sae_out, dense.sae_out, atol=1e-5)
    acts = torch.zeros(B, D_SAE).index_put_((sparse.active.rows, sparse.active.cols), sparse.values)
    assert torch.allclose(acts, dense.feature_acts, atol=1e-6)
    assert set(sparse_grads) == set(dense_grads)
    for name, grad in dense_grads.items():
        assert torch.allclose(sparse_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_dense_support_falls_back_to_the_dense_step():
    sae = _sae("relu")
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every latent fires
    assert sparse_threshold_forward(sae, torch.randn(B, D_IN), {"l1": 1.0}) is None
