"""Synthetic ground truth: the recovery metric knows the right answer."""

from __future__ import annotations

import torch

from abstopk_eval.synthetic import SyntheticConfig, make_synthetic, recovery

CFG = SyntheticConfig(d=64, n_atoms=128, seed=0)


def test_true_dictionary_is_fully_recovered_and_a_random_one_is_not():
    data = make_synthetic(CFG)
    doubled = torch.cat([data.atoms, -data.atoms[data.bipolar]])  # what a non-negative SAE needs: both poles
    assert recovery(data.atoms, data.bipolar, data.atoms, signed=True).frac_recovered == 1.0
    assert recovery(data.atoms, data.bipolar, doubled, signed=False).frac_recovered == 1.0
    assert recovery(data.atoms, data.bipolar, data.atoms, signed=True).mean_split_count_bipolar == 1.0
    assert recovery(data.atoms, data.bipolar, doubled, signed=False).mean_split_count_bipolar == 2.0
    random = torch.randn(256, CFG.d, generator=torch.Generator().manual_seed(1))
    for signed in (True, False):
        rec = recovery(data.atoms, data.bipolar, random, signed=signed)
        assert rec.frac_recovered == 0.0 and rec.mean_max_cosine < 0.5


def test_a_non_negative_sae_with_one_pole_misses_the_bipolar_atoms():
    data = make_synthetic(CFG)
    rec = recovery(data.atoms, data.bipolar, data.atoms, signed=False)
    assert rec.frac_unipolar_recovered == 1.0 and rec.frac_bipolar_recovered == 0.0
