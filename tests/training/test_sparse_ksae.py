"""The sparse k-SAE training path equals sae_lens's dense training_forward_pass (loss and gradients)."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from abstopk_eval.saes.variants import SparsityHyperparams, get_variant
from abstopk_eval.training.sparse_ksae import Active, GatherPreActivations, SparseDecode, sparse_training_forward

K_VARIANTS = ["topk", "batchtopk", "abstopk", "batch-abstopk"]
D_IN, D_SAE, K, B = 16, 96, 5, 40


def _sae(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    sae = get_variant(variant).build(D_IN, D_SAE, SparsityHyperparams(k=K, l1_coefficient=1.0, l0_coefficient=1.0))
    with torch.no_grad():  # non-trivial decoder norms and biases, so every term of the math is exercised
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 2 + 0.5)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _grads(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", K_VARIANTS)
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_step_matches_sae_lens_dense_step(variant, with_dead):
    sae = _sae(variant)
    x = torch.randn(B, D_IN) * 2
    dead = (torch.arange(D_SAE) % 3 == 0) if with_dead else torch.zeros(D_SAE, dtype=torch.bool)
    dense = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    )
    dense_grads = _grads(sae, dense.loss)
    sparse = sparse_training_forward(sae, x, get_variant(variant), dead)
    sparse_grads = _grads(sae, sparse.loss)
    assert torch.allclose(sparse.loss, dense.loss, rtol=1e-5)
    assert torch.allclose(sparse.sae_out, dense.sae_out, atol=1e-5)
    acts = torch.zeros(B, D_SAE).index_put_((sparse.active.rows, sparse.active.cols), sparse.values)
    assert torch.allclose(acts, dense.feature_acts, atol=1e-5)
    if variant in ("abstopk", "batch-abstopk"):
        assert (acts < 0).any()
    assert set(sparse_grads) == set(dense_grads)
    for name, grad in dense_grads.items():
        assert torch.allclose(sparse_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_gather_pre_activations_backward_matches_dense_autograd():
    torch.manual_seed(0)
    x = torch.randn(6, 4, requires_grad=True)
    b_dec = torch.randn(4, requires_grad=True)
    W = torch.randn(4, 9, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 5])
    cols = torch.tensor([2, 7, 2, 0, 4, 8, 8])
    g = torch.randn(7)
    dense = ((x - b_dec) @ W + b)[rows, cols]
    ref = torch.autograd.grad((dense * g).sum(), (x, b_dec, W, b))
    out = GatherPreActivations.apply(x, b_dec, W, b, Active(rows, cols, 6, 9), dense.detach())
    got = torch.autograd.grad((out * g).sum(), (x, b_dec, W, b))
    for r, s in zip(ref, got):
        assert torch.allclose(r, s, atol=1e-5)


def test_sparse_decode_backward_matches_dense_autograd():
    torch.manual_seed(0)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 5])
    cols = torch.tensor([2, 7, 2, 0, 4, 8, 8])
    values = torch.randn(7, requires_grad=True)
    W = torch.randn(9, 4, requires_grad=True)
    g = torch.randn(6, 4)
    dense = torch.zeros(6, 9).index_put((rows, cols), values) @ W
    ref = torch.autograd.grad((dense * g).sum(), (values, W))
    out = SparseDecode.apply(values, W, Active(rows, cols, 6, 9))
    assert torch.allclose(out, dense, atol=1e-6)
    got = torch.autograd.grad((out * g).sum(), (values, W))
    for r, s in zip(ref, got):
        assert torch.allclose(r, s, atol=1e-5)


@pytest.mark.parametrize("per_row", [3, 8, 40])
@pytest.mark.parametrize("crowded_row", [False, True])
def test_two_stage_batch_topk_equals_flat_topk(per_row, crowded_row):
    from abstopk_eval.training.sparse_ksae import _batch_topk_positions

    torch.manual_seed(1)
    score = torch.randn(50, 64)
    if crowded_row:
        score[7] += 5  # one row holds many of the winners: exercises the exactness fallback
    n_keep = 120
    expected = torch.topk(score.flatten(), n_keep).indices.sort().values
    assert torch.equal(_batch_topk_positions(score, n_keep, per_row), expected)


@pytest.mark.parametrize("variant", K_VARIANTS)
def test_bf16_encoder_selects_almost_the_same_latents_with_fp32_values(variant):
    """The bf16 option only ranks latents in bf16: values, loss and gradients stay fp32 up to near-ties."""
    sae = _sae(variant)
    x = torch.randn(B, D_IN) * 2
    dead = torch.arange(D_SAE) % 3 == 0
    ref = sparse_training_forward(sae, x, get_variant(variant), dead)
    ref_grads = _grads(sae, ref.loss)
    low = sparse_training_forward(sae, x, get_variant(variant), dead, encoder_dtype=torch.bfloat16)
    low_grads = _grads(sae, low.loss)
    pairs = lambda out: set(zip(out.active.rows.tolist(), out.active.cols.tolist()))  # noqa: E731
    assert len(pairs(low) & pairs(ref)) >= 0.95 * len(pairs(ref))
    assert low.values.dtype == torch.float32
    if variant in ("topk", "batchtopk"):
        assert (low.values >= 0).all()
    assert torch.allclose(low.loss, ref.loss, rtol=2e-2)
    for name, grad in ref_grads.items():
        assert (low_grads[name] - grad).norm() <= 0.1 * grad.norm() + 1e-6, name
