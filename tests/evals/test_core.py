"""Negating one signed latent (encoder column, encoder bias, decoder row) changes no metric."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig

from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.core.main import run_core
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.saes.batch_abstopk import BatchAbsTopKSAE, BatchAbsTopKSAEConfig
from tests.helpers.models import D_MODEL, VOCAB, tiny_llama

# frac_negative describes the parametrisation (which pole a latent calls positive), so negating a latent
# changes it by construction; it is the one reported number that is not a function of the SAE's map.
PARAMETRISATION_DEPENDENT = {("sparsity", "frac_negative")}


def _random_sae(kind: str, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    if kind == "abstopk":
        sae = AbsTopKSAE(AbsTopKSAEConfig(d_in=D_MODEL, d_sae=64, k=4))
    else:
        sae = BatchAbsTopKSAE(BatchAbsTopKSAEConfig(d_in=D_MODEL, d_sae=64))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        if kind == "batch-abstopk":
            sae.threshold.fill_(0.8)
    return sae


def negate_latent(sae: SAE, j: int) -> SAE:
    flipped = copy.deepcopy(sae)
    with torch.no_grad():
        flipped.W_enc[:, j] *= -1
        flipped.b_enc[j] *= -1
        flipped.W_dec[j] *= -1
    return flipped


def _context(adapter: ModelAdapter, acts: torch.Tensor, tokens: torch.Tensor) -> EvalContext:
    return EvalContext(
        adapter=adapter,
        model_key="tiny",
        model_name="tiny",
        layer=1,
        eval_tokens=tokens,
        heldout_activations=lambda: acts,
        dataset="random tokens",
    )


@pytest.mark.parametrize("kind", ["abstopk", "batch-abstopk"])
def test_core_metrics_invariant_to_negating_a_latent(kind):
    model, tok = tiny_llama()
    adapter = ModelAdapter(model, tok)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (4, 16), generator=g)
    tokens[:, 0] = tok.bos_token_id
    acts = adapter.activations(tokens, 1)[:, 1:].reshape(-1, D_MODEL)
    sae = _random_sae(kind)
    # pick a latent that really fires, with both signs present somewhere in the SAE
    z = sae.encode(acts)
    j = int((z != 0).sum(0).argmax())
    assert (z[:, j] != 0).any()
    out = run_core(_context(adapter, acts, tokens), {"orig": sae, "flip": negate_latent(sae, j)})
    a, b = asdict(out["orig"].eval_result_metrics), asdict(out["flip"].eval_result_metrics)
    compared = 0
    for category, metrics in a.items():
        for name, value in metrics.items():
            if (category, name) in PARAMETRISATION_DEPENDENT:
                continue
            assert b[category][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (category, name)
            compared += 1
    assert compared > 15
    # the excluded statistic does move, so the invariance above is not vacuous for signed latents
    assert a["sparsity"]["frac_negative"] != b["sparsity"]["frac_negative"]
    assert a["sparsity"]["l0"] > 0 and 0 < a["sparsity"]["frac_negative"] < 1


def test_ce_and_kl_match_the_direct_formulas():
    import torch.nn.functional as F

    from abstopk_eval.evals.core.main import _ce_and_kl

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (2, 7), generator=g)
    clean_logits, logits = torch.randn(2, 7, 50, generator=g) * 3, torch.randn(2, 7, 50, generator=g) * 3
    clean_logp = F.log_softmax(clean_logits[:, :-1], -1)
    ce, kl = _ce_and_kl(logits, tokens, clean_logp.exp(), (clean_logp.exp() * clean_logp).sum(-1))
    logp = F.log_softmax(logits[:, :-1], -1)
    assert torch.allclose(ce, -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(kl, (clean_logp.exp() * (clean_logp - logp)).sum(-1), atol=1e-5)
    assert (kl >= -1e-6).all()
