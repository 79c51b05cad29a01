"""Fragmentation: antiparallel atom pairs, counted sign-invariantly for signed SAEs."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.fragmentation.eval_config import FragmentationEvalConfig
from abstopk_eval.evals.fragmentation.main import run_fragmentation
from tests.helpers.context import make_eval_context
from tests.helpers.saes import negate_latent

D, N = 32, 40


def _with_decoder(cls, cfg_cls, W_dec: torch.Tensor):
    sae = cls(cfg_cls(d_in=D, d_sae=W_dec.shape[0], k=4))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_enc.zero_()
    return sae


def _decoder() -> torch.Tensor:
    """N random unit atoms plus, for atoms 0..4, an exactly antiparallel copy (5 split axes)."""
    g = torch.Generator().manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1)
    return torch.cat([W, -W[:5]])


def _ctx() -> EvalContext:
    acts = torch.randn(512, D, generator=torch.Generator().manual_seed(1))
    return make_eval_context(None, layer=0, heldout_activations=acts, dataset="synthetic")


CFG = FragmentationEvalConfig(model_name="tiny", layer=0, alive_only=False)


def _metrics(out):
    return out.eval_result_metrics.antiparallel


def test_counts_the_planted_antiparallel_pairs():
    out = run_fragmentation(_ctx(), {"topk": _with_decoder(TopKSAE, TopKSAEConfig, _decoder())}, CFG)["topk"]
    m = _metrics(out)
    assert m.n_antiparallel_pairs == 5 and not m.signed_latents
    assert abs(m.frac_atoms_in_antiparallel_pair - 10 / (N + 5)) < 1e-9
    assert m.n_parallel_pairs == 0
    assert sum(out.eval_result_unstructured["histogram"]["counts"]) == N + 5


def test_signed_sae_counts_axis_duplicates_of_either_sign_and_is_flip_invariant():
    W = _decoder()
    W[N:] = -W[N:]  # now exact parallel duplicates: for a signed SAE still the same 5 split axes
    sae = _with_decoder(AbsTopKSAE, AbsTopKSAEConfig, W)
    ref = run_fragmentation(_ctx(), {"a": sae}, CFG)["a"]
    assert _metrics(ref).n_antiparallel_pairs == 5 and _metrics(ref).signed_latents
    for j in (0, N, 7):
        flipped = run_fragmentation(_ctx(), {"a": negate_latent(sae, j)}, CFG)["a"]
        assert _metrics(flipped) == _metrics(ref)
        assert flipped.eval_result_unstructured == ref.eval_result_unstructured


def test_alive_only_scores_latents_that_fire():
    sae = _with_decoder(TopKSAE, TopKSAEConfig, _decoder())
    with torch.no_grad():
        sae.b_enc[N:] = -1e6  # the planted partners never fire: no antiparallel pair among alive atoms
    cfg = FragmentationEvalConfig(model_name="tiny", layer=0, alive_only=True)
    m = _metrics(run_fragmentation(_ctx(), {"t": sae}, cfg)["t"])
    assert m.n_antiparallel_pairs == 0 and m.n_atoms_scored <= N


def _with_dead(cls, cfg_cls, W_alive: torch.Tensor, n_dead: int):
    """W_alive's atoms, then `n_dead` latents that never fire (zero encoder column and bias) whose decoder rows copy
    alive atoms (so counting them would add duplicate pairs)."""
    W = torch.cat([W_alive, W_alive[:n_dead] if n_dead <= len(W_alive) else W_alive.repeat(n_dead, 1)[:n_dead]])
    sae = _with_decoder(cls, cfg_cls, W)
    with torch.no_grad():
        sae.W_enc[:, len(W_alive) :] = 0.0
        sae.b_enc[len(W_alive) :] = 0.0
    return sae


@pytest.mark.parametrize("alive_only", [True, False])
def test_alive_normalised_fraction_ignores_dead_latents_and_means_the_same_for_both_families(alive_only):
    antiparallel = _decoder()
    parallel = antiparallel.clone()
    parallel[N:] = -parallel[N:]
    cfg = FragmentationEvalConfig(model_name="tiny", layer=0, alive_only=alive_only)
    cases = [
        (TopKSAE, TopKSAEConfig, antiparallel),  # a split axis: d and -d
        (TopKSAE, TopKSAEConfig, parallel),  # a duplicated axis: d twice
        (AbsTopKSAE, AbsTopKSAEConfig, parallel),  # for a signed SAE both are the same redundancy
        (AbsTopKSAE, AbsTopKSAEConfig, antiparallel),
    ]
    for cls, cfg_cls, W in cases:
        for n_dead in (0, 7, 60):
            m = _metrics(run_fragmentation(_ctx(), {"s": _with_dead(cls, cfg_cls, W, n_dead)}, cfg)["s"])
            assert m.n_alive == N + 5, (cls, n_dead)
            assert abs(m.frac_alive_in_axis_duplicate_pair - 10 / (N + 5)) < 1e-9, (cls, n_dead)
            assert abs(m.axis_duplicate_pairs_per_alive - 5 / (N + 5)) < 1e-9
            assert m.n_atoms_scored == (N + 5 if alive_only else N + 5 + n_dead)
