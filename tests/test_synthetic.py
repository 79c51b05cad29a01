"""Synthetic ground truth: recovery needs the decoder direction AND the latent's activity with the matching sign on
both poles' samples; one signed latent recovers a two-signed atom, a non-negative SAE only as two split latents."""

from __future__ import annotations

import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from abstopk_eval.synthetic import SyntheticConfig, make_synthetic, recovery

CFG = SyntheticConfig(d=64, n_atoms=128, mean_active=4.0, seed=0)
DATA = make_synthetic(CFG)
HELD, COEF = DATA.sample_with_coefficients(4096, torch.Generator().manual_seed(1))


def _sae(cls, cfg_cls, W_dec: torch.Tensor, bias: float = 0.0, **kw):
    sae = cls(cfg_cls(d_in=CFG.d, d_sae=W_dec.shape[0], **kw))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_enc.fill_(bias)
        sae.b_dec.zero_()
    return sae


def _recovery(sae, signed: bool):
    with torch.no_grad():
        z = sae.encode(HELD)
    return recovery(DATA.atoms, DATA.bipolar, sae.W_dec, z, COEF, signed=signed)


def test_one_abstopk_latent_recovers_a_two_signed_atom():
    rec = _recovery(_sae(AbsTopKSAE, AbsTopKSAEConfig, DATA.atoms, k=8), signed=True)
    assert rec.frac_bipolar_one_latent > 0.95 and rec.frac_bipolar_split == 0.0
    assert rec.frac_unipolar_recovered > 0.95 and rec.mean_split_count_bipolar < 1.05
    assert rec.n_unscored < 5


def test_a_relu_sae_recovers_it_only_as_two_split_latents():
    doubled = torch.cat([DATA.atoms, -DATA.atoms[DATA.bipolar]])  # d for one pole, -d for the other
    rec = _recovery(_sae(StandardSAE, StandardSAEConfig, doubled, bias=-0.3), signed=False)
    assert rec.frac_bipolar_one_latent == 0.0 and rec.frac_bipolar_split > 0.95
    assert rec.frac_bipolar_recovered == rec.frac_bipolar_split and rec.mean_split_count_bipolar > 1.95
    one_pole = _recovery(_sae(StandardSAE, StandardSAEConfig, DATA.atoms, bias=-0.3), signed=False)
    assert one_pole.frac_bipolar_recovered == 0.0 and one_pole.frac_unipolar_recovered > 0.95


def test_a_decoder_atom_that_never_takes_the_negative_sign_does_not_recover_a_two_signed_atom():
    """The old, decoder-only rule counted this: |cos| = 1 for every atom, but the latent is never negative."""
    rec = _recovery(_sae(TopKSAE, TopKSAEConfig, DATA.atoms, k=8), signed=True)
    assert rec.mean_max_cosine > 0.999  # the decoder alone looks perfect
    assert rec.frac_bipolar_recovered == 0.0 and rec.frac_unipolar_recovered > 0.95


def test_a_random_dictionary_recovers_nothing():
    random = torch.nn.functional.normalize(torch.randn(256, CFG.d, generator=torch.Generator().manual_seed(2)), dim=-1)
    rec = _recovery(_sae(AbsTopKSAE, AbsTopKSAEConfig, random, k=8), signed=True)
    assert rec.frac_recovered == 0.0 and rec.mean_max_cosine < 0.6
