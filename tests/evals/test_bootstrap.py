"""The bootstrap helpers against an explicit resample-and-recompute loop."""

from __future__ import annotations

import torch

from abstopk_eval.evals.bootstrap import block_sums, percentile_interval, resample_counts, weighted_sums


def test_counts_are_resamples_with_replacement():
    counts = resample_counts(7, n_resamples=50, seed=3)
    assert counts.shape == (50, 7)
    assert torch.all(counts.sum(1) == 7)
    assert torch.equal(counts, resample_counts(7, n_resamples=50, seed=3))  # same seed, same resamples (paired)
    assert not torch.equal(counts, resample_counts(7, n_resamples=50, seed=4))


def test_weighted_ratio_matches_explicit_resampling():
    gen = torch.Generator().manual_seed(0)
    numer, denom = (
        torch.rand(40, generator=gen, dtype=torch.float64),
        torch.rand(40, generator=gen, dtype=torch.float64) + 1,
    )
    picks = torch.randint(40, (200, 40), generator=gen)
    counts = torch.zeros(200, 40, dtype=torch.float64).scatter_add_(1, picks, torch.ones(200, 40, dtype=torch.float64))
    fast = weighted_sums(counts, numer) / weighted_sums(counts, denom)
    slow = torch.stack([numer[p].sum() / denom[p].sum() for p in picks])
    torch.testing.assert_close(fast, slow)
    lo, hi = percentile_interval(fast)
    assert lo < float(numer.sum() / denom.sum()) < hi


def test_interval_narrows_with_more_data():
    gen = torch.Generator().manual_seed(1)
    widths = []
    for n in (20, 2000):
        values = torch.randn(n, generator=gen, dtype=torch.float64)
        lo, hi = percentile_interval(weighted_sums(resample_counts(n, 500), values) / n)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # ~ 1 / sqrt(n): a factor of 10 expected


def test_block_sums():
    values = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    torch.testing.assert_close(
        block_sums(values, 2), torch.tensor([[2.0, 4.0], [10.0, 12.0], [8.0, 9.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(block_sums(torch.ones(5), 5), torch.tensor([5.0], dtype=torch.float64))
