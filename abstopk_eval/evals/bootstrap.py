"""Bootstrap confidence intervals for metrics that are ratios of sums over examples.

Every core metric is a smooth function of per-example sums (squared error, squared norm, CE of the
clean / zero-ablated / spliced model). Resampling examples with replacement is the same as drawing
multinomial counts w over the examples and recomputing the metric from w-weighted sums, so one
[n_resamples, n_examples] count matrix gives every metric's bootstrap distribution with a matmul, and the
same counts are reused for every SAE (a paired bootstrap: differences between SAEs share the resampling).

Tokens of one sequence are correlated, so the unit is a sequence (CE / KL) or a block of contiguous
activation rows of one sequence's length (reconstruction), not a token.

Task evaluations keep their headline metrics' bootstrap samples (`paired_samples`): the resamples depend only
on the evaluation's units, never on the SAE, so the report differences two SAEs sample by sample (a paired
bootstrap, `paired_difference_samples`) and says whether one beats the other beyond the evaluation's noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
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


# ----------------------------------------------------------------------------- paired samples across SAEs

PAIRED_SAMPLES_KEY = "bootstrap_samples"
"""Where a result keeps its `paired_samples` record (in eval_result_unstructured)."""
INTERVALS_KEY = "bootstrap_ci95"
"""Where a result keeps `{metric: [low, high]}` (in eval_result_unstructured; read by `columns.Column.interval`)."""


def units_digest(unit_keys: Sequence[str]) -> str:
    """Identifies the evaluation units in their order: two results' samples pair only when this is equal."""
    return hashlib.sha256("\n".join(unit_keys).encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def paired_samples(
    unit: str, unit_keys: Sequence[str], seed: int, samples: dict[str, torch.Tensor | np.ndarray | Sequence[float]]
) -> dict[str, Any]:
    """The record a task evaluation writes under `PAIRED_SAMPLES_KEY`: each headline metric's bootstrap samples,
    drawn with `resample_counts(len(unit_keys), R, seed)` over units that do not depend on the SAE (questions, test
    texts, entities), so sample r of two SAEs used the same resample and their difference is a paired bootstrap
    (`paired_difference`). `unit` says what a unit is; `unit_keys` name the units in order (texts, ids)."""
    return {
        "unit": unit,
        "n_units": len(unit_keys),
        "units_digest": units_digest(unit_keys),
        "seed": int(seed),
        "samples": {
            name: [round(float(v), 7) for v in np.asarray(s, dtype=float).ravel()] for name, s in samples.items()
        },
    }


def sample_intervals(record: dict[str, Any]) -> dict[str, list[float]]:
    """`{metric: [low, high]}` percentile intervals of a `paired_samples` record (what `INTERVALS_KEY` holds)."""
    return {
        name: list(percentile_interval(torch.tensor(s, dtype=torch.float64))) for name, s in record["samples"].items()
    }


def pairable(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> bool:
    """Whether two results' sample records used the same units, resamples and count (so they pair)."""
    if not a or not b or metric not in a.get("samples", {}) or metric not in b.get("samples", {}):
        return False
    keys = ("unit", "n_units", "units_digest", "seed")
    return all(a.get(k) == b.get(k) for k in keys) and len(a["samples"][metric]) == len(b["samples"][metric])


def paired_difference_samples(a: dict[str, Any], b: dict[str, Any], metric: str) -> np.ndarray:
    """Bootstrap samples of metric(A) - metric(B) on the same resamples (`pairable` must hold)."""
    if not pairable(a, b, metric):
        raise ValueError(f"bootstrap samples of {metric!r} do not pair (different units, seed or resample count)")
    return np.asarray(a["samples"][metric], dtype=float) - np.asarray(b["samples"][metric], dtype=float)
