"""Each variant's activation against hand-computed examples (training rule and saved inference rule)."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopK
from sae_lens.saes.batchtopk_sae import BatchTopK
from sae_lens.saes.topk_sae import TopK

from abstopk_eval.saes.batch_abstopk import BatchAbsTopK, signed_threshold

U = torch.tensor([[3.0, -5.0, 1.0, 2.0], [0.5, 4.0, -1.0, 0.0]])


def test_topk_keeps_k_largest_and_relu():
    assert torch.equal(TopK(2)(U), torch.tensor([[3.0, 0, 0, 2.0], [0.5, 4.0, 0, 0]]))


def test_abstopk_keeps_largest_magnitudes_with_sign():
    assert torch.equal(AbsTopK(2)(U), torch.tensor([[3.0, -5.0, 0, 0], [0, 4.0, -1.0, 0]]))


def test_abstopk_all_negative_input_stays_negative_while_topk_is_silent():
    u = torch.tensor([[-1.0, -4.0, -2.0, -3.0]])
    assert torch.equal(AbsTopK(2)(u), torch.tensor([[0, -4.0, 0, -3.0]]))
    assert torch.equal(TopK(2)(u), torch.zeros_like(u))


def test_abstopk_ties_select_exactly_k_of_the_tied_entries():
    u = torch.tensor([[2.0, -2.0, 1.0, 2.0]])
    z = AbsTopK(2)(u)
    assert int((z != 0).sum()) == 2
    assert z[0, 2] == 0  # the smaller magnitude never wins
    nz = z != 0
    assert torch.equal(z[nz], u[nz])  # selected values keep their sign and size


def test_batchtopk_selects_over_the_batch():
    assert torch.equal(BatchTopK(1)(U), torch.tensor([[3.0, 0, 0, 0], [0, 4.0, 0, 0]]))


def test_batch_abstopk_selects_largest_magnitudes_over_the_batch():
    assert torch.equal(BatchAbsTopK(1)(U), torch.tensor([[0, -5.0, 0, 0], [0, 4.0, 0, 0]]))
    assert torch.equal(BatchAbsTopK(1.5)(U), torch.tensor([[3.0, -5.0, 0, 0], [0, 4.0, 0, 0]]))


def test_batch_abstopk_inference_threshold_is_on_magnitude():
    z = signed_threshold(U, torch.full((4,), 1.5))
    assert torch.equal(z, torch.tensor([[3.0, -5.0, 0, 2.0], [0, 4.0, 0, 0]]))


@pytest.mark.parametrize("variant", ["relu", "jumprelu", "topk", "batchtopk", "abstopk", "batch-abstopk"])
def test_inference_checkpoint_activation_matches_hand_rule(variant, tmp_path):
    """The saved sae_lens checkpoint applies the documented rule to u = W_enc^T(x - b_dec) + b_enc."""
    from abstopk_eval.saes.io import export_inference_sae, load_sae
    from abstopk_eval.saes.variants import SparsityHyperparams, get_variant

    d = 4
    sae = get_variant(variant).build(d, d, SparsityHyperparams(k=2, l1_coefficient=1.0, l0_coefficient=1.0))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(1.5)
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold.fill_(1.5)
    export_inference_sae(sae, tmp_path / variant, mean=torch.zeros(d), scale=1.0, metadata={})
    loaded = load_sae(tmp_path / variant)
    z = loaded.encode(U)
    expected = {
        "relu": U.relu(),
        "jumprelu": U * (U > 1.5),
        "topk": TopK(2)(U),
        "batchtopk": U * (U > 1.5),
        "abstopk": AbsTopK(2)(U),
        "batch-abstopk": signed_threshold(U, torch.full((d,), 1.5)),
    }[variant]
    assert torch.allclose(z, expected)
