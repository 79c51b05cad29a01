"""Fragmentation: antiparallel atom pairs, counted sign-invariantly for signed SAEs."""

from __future__ import annotations

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
