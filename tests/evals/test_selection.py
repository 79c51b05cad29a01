"""The shared, per-latent oriented selection rules (abstopk_eval.evals.selection): sae_bench's own functions for
non-negative latents, unchanged by negating a latent, and a latent that carries the class in its sign is chosen."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from abstopk_eval.evals.pooled import decoder_rows
from abstopk_eval.evals.selection import (
    mean_diff,
    orientation,
    scr_effects,
    select_top_n,
    top_k_by_abs_mean_diff,
    tpp_effects,
)
from tests.helpers.models import D_MODEL
from tests.helpers.saes import random_sae

N_PER_CLASS, N_TOKENS = 24, 5


def _acts(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token activations [B, L, D] of a positive and a negative set, the positive one shifted so classes differ."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(D_MODEL, generator=g)
    pos = torch.randn(N_PER_CLASS, N_TOKENS, D_MODEL, generator=g) + shift
    neg = torch.randn(N_PER_CLASS, N_TOKENS, D_MODEL, generator=g)
    return pos, neg


def _pooled(sae, pos: torch.Tensor, neg: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Our side: each text's mean latent over its tokens, labels 1 (positive) / 0."""
    with torch.no_grad():
        z = torch.cat([sae.encode(pos), sae.encode(neg)]).mean(1).double().numpy()
    return z, np.r_[np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)]


def _sae_bench_effects(sae, w: np.ndarray, acts: dict[str, torch.Tensor], cls: str, perform_scr: bool) -> torch.Tensor:
    from sae_bench.evals.scr_and_tpp.main import get_effects_per_class_precomputed_acts

    probe = SimpleNamespace(net=torch.nn.Linear(D_MODEL, 1))
    with torch.no_grad():
        probe.net.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
    torch.manual_seed(0)
    with torch.no_grad():
        return get_effects_per_class_precomputed_acts(sae, probe, cls, acts, perform_scr, sae_batch_size=16)


def _sae_bench_top_n(effects: torch.Tensor, n: int) -> set[int]:
    from sae_bench.evals.scr_and_tpp.main import select_top_n_features

    return set(torch.nonzero(select_top_n_features(effects, n, "c")).flatten().tolist())


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "topk"])
def test_tpp_and_scr_effects_are_sae_bench_for_non_negative_latents(kind):
    sae = random_sae(kind, threshold=0.2, k=12)
    pos, neg = _acts(1)
    z, y = _pooled(sae, pos, neg)
    assert (z >= 0).all() and (z > 0).any()
    w = np.random.default_rng(0).normal(size=D_MODEL)
    rows = decoder_rows(sae)
    for perform_scr, cls, acts in [
        (False, "a", {"a": pos, "b": neg}),  # TPP: one class against the other (sae_bench samples all of them)
        (True, "male / female", {"male / female": pos, "female_data_only": neg}),  # SCR: a paired class
    ]:
        ref = _sae_bench_effects(sae, w, acts, cls, perform_scr)
        ours = (scr_effects if perform_scr else tpp_effects)(z, y, w, rows)
        assert np.allclose(ours, ref.double().numpy(), rtol=1e-4, atol=1e-6), perform_scr
        if not perform_scr:
            assert (ours == 0).any() and (ours != 0).sum() > 8  # the clamp gates some latents, not all
        for n in (1, 3, 8):
            assert set(select_top_n(ours, n).tolist()) == _sae_bench_top_n(ref, n), (perform_scr, n)


@pytest.mark.parametrize("kind", ["relu", "abstopk"])
def test_top_k_mean_diff_is_sae_bench_get_top_k_mean_diff_mask(kind):
    from sae_bench.evals.sparse_probing.probe_training import get_top_k_mean_diff_mask

    sae = random_sae(kind, k=12)
    z, y = _pooled(sae, *_acts(2))
    for k in (1, 4, 10):
        mask = get_top_k_mean_diff_mask(torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y), k)
        assert set(top_k_by_abs_mean_diff(z, y, k).tolist()) == set(torch.nonzero(~mask).flatten().tolist())


def test_orientation_flips_with_the_latent_and_is_plus_one_for_non_negative_latents():
    g = np.random.default_rng(0)
    z = g.normal(size=(40, 12)) * (g.random((40, 12)) < 0.4)
    y = (g.random(40) < 0.5).astype(np.int64)
    z[:, 0] = 0.0  # dead
    z[y == 1, 1] = 0.0  # silent on the target: falls back to the sign over all rows
    z[:, 2] = 0.0
    z[[3, 5], 2] = [2.0, -2.0]  # sums to 0 everywhere: falls back to its first non-zero value
    y[[3, 5]] = 1
    s = orientation(z, y)
    assert set(s.tolist()) <= {-1.0, 1.0}
    assert s[2] == 1.0 and orientation(-z, y)[2] == -1.0
    flip = np.where(g.random(12) < 0.5, -1.0, 1.0)
    flip[0] = 1.0  # a dead latent has +1 either way
    assert np.array_equal(orientation(z * flip, y), s * flip)
    assert (orientation(np.abs(z), y) == 1).all()
    targets = np.eye(3)[g.integers(0, 3, 40)]  # several targets at once (absorption's letters)
    assert np.array_equal(orientation(z, targets)[1], orientation(z, targets[:, 1]))


def test_every_rule_is_unchanged_by_negating_latents():
    g = np.random.default_rng(1)
    z = g.normal(size=(60, 20)) * (g.random((60, 20)) < 0.5)
    y = (g.random(60) < 0.5).astype(np.int64)
    rows, w = g.normal(size=(20, 8)), g.normal(size=8)
    flip = np.where(g.random(20) < 0.5, -1.0, 1.0)
    zf, rowsf = z * flip, rows * flip[:, None]
    assert np.array_equal(tpp_effects(zf, y, w, rowsf), tpp_effects(z, y, w, rows))
    assert np.allclose(scr_effects(zf, y, w, rowsf), scr_effects(z, y, w, rows))
    assert np.array_equal(top_k_by_abs_mean_diff(zf, y, 10), top_k_by_abs_mean_diff(z, y, 10))
    assert (tpp_effects(z, y, w, rows) != 0).sum() > 3  # not vacuous


def _old_tpp_effects(z, y, w, rows):
    """The rule TPP used before: gate on mean |z| being larger on the class."""
    return np.where(mean_diff(np.abs(z), y) > 0, mean_diff(z, y) * (rows @ w), 0.0)


def test_tpp_chooses_the_latent_that_carries_the_class_in_its_sign_first():
    a = 3.0
    y = np.r_[np.ones(10, dtype=np.int64), np.zeros(10, dtype=np.int64)]
    z = np.zeros((20, 5))
    z[:, 0] = np.where(y == 1, a, -a)  # two-signed: +a on the class, -a on the rest
    z[:, 1] = np.where(y == 1, a, 0.0)  # one-signed, the non-negative SAE's latent for the class
    z[:, 2] = np.where(y == 1, -a, a)  # latent 0 negated (with its decoder row, below)
    z[:, 3] = np.where(y == 1, 0.0, -a)  # silent on the class: never chosen, in either orientation
    z[:, 4] = np.where(y == 1, 0.5 * a, -0.5 * a)  # two-signed, weaker
    rows, w = np.eye(5), np.ones(5)
    rows[2] *= -1
    eff = tpp_effects(z, y, w, rows)
    assert eff.tolist() == pytest.approx([2 * a, a, 2 * a, 0.0, a])
    assert select_top_n(eff, 5).tolist() == [0, 2, 1, 4]
    assert tpp_effects(-z[:, [3]], y, w[:1], rows[:1, :1])[0] == 0.0
    old = _old_tpp_effects(z, y, w, rows)
    assert old[0] == 0.0 and old[2] == 0.0 and select_top_n(old, 5).tolist() == [1]  # the old rule dropped them


def test_scr_and_sparse_probing_rank_the_two_signed_latent_first():
    y = np.r_[np.ones(10, dtype=np.int64), np.zeros(10, dtype=np.int64)]
    z = np.zeros((20, 3))
    z[:, 0] = np.where(y == 1, 0.0, 2.0)  # one-signed, marking the rest
    z[:, 1] = np.where(y == 1, 2.0, -2.0)  # two-signed
    z[:, 2] = np.where(y == 1, 2.0, 0.0)  # one-signed, marking the class
    rows, w = np.eye(3), np.ones(3)
    assert select_top_n(scr_effects(z, y, w, rows), 3)[0] == 1
    assert top_k_by_abs_mean_diff(z, y, 3).tolist() == [1, 0, 2]
