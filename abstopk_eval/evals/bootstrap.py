"""Bootstrap confidence intervals for metrics that are ratios of sums over examples.

Every core metric is a smooth function of per-example sums (squared error, squared norm, CE of the
clean / zero-ablated / spliced model). Resampling examples with replacement is the same as drawing
multinomial counts w over the examples and recomputing the metric from w-weighted sums, so one
[n_resamples, n_examples] count matrix gives every metric's bootstrap distribution with a matmul, and the
same counts are reused for every SAE (a paired bootstrap: differences between SAEs share the resampling).

Tokens of one sequence are correlated, so the unit is a sequence (CE / KL) or a block of contiguous
activation rows of one sequence's length (reconstruction), not a token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CI_LEVEL = 0.95


def resample_counts(n_units: int, n_resamples: int = 1000, seed: int = 0) -> torch.Tensor:
    """[n_resamples, n_units] float64 counts of each unit in a resample drawn with replacement."""
    if n_units < 1:
        raise ValueError("bootstrap needs at least one unit")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(n_units, (n_resamples, n_units), generator=gen)
    counts = torch.zeros(n_resamples, n_units, dtype=torch.float64)
    return counts.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))


def weighted_sums(counts: torch.Tensor, per_unit: torch.Tensor) -> torch.Tensor:
    """Resampled totals: counts [R, G] @ per_unit [G] or [G, d] -> [R] or [R, d]."""
    return counts @ per_unit.to(torch.float64)


def percentile_interval(samples: torch.Tensor) -> tuple[float, float]:
    """Central CI_LEVEL percentile interval of bootstrap samples (NaNs, from empty resamples, dropped)."""
    samples = samples[torch.isfinite(samples)].to(torch.float64)
    alpha = (1 - CI_LEVEL) / 2
    return float(torch.quantile(samples, alpha)), float(torch.quantile(samples, 1 - alpha))


def ci(
    counts: torch.Tensor, statistic: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
) -> tuple[float, float]:
    """Interval of `statistic(total)`, where `total(per_unit)` returns the resampled sums of a per-unit tensor."""
    return percentile_interval(statistic(lambda per_unit: weighted_sums(counts, per_unit)))


def block_sums(values: torch.Tensor, block: int) -> torch.Tensor:
    """Sum consecutive rows of `values` ([n] or [n, d]) in blocks of `block` rows (the last block may be shorter)."""
    n = values.shape[0]
    index = torch.arange(n, device=values.device) // max(block, 1)
    out = torch.zeros((int(index[-1]) + 1 if n else 0, *values.shape[1:]), dtype=torch.float64, device=values.device)
    return out.index_add_(0, index, values.to(torch.float64))
