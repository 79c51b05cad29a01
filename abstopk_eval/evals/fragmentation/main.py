"""Fragmentation: count decoder atoms that come in nearly antiparallel pairs (a bipolar axis split in two).

The paper argues that a non-negative SAE needs two atoms, d and about -d, for a bipolar concept, while an
AbsTopK latent covers both poles with one atom. For a non-negative SAE the effective cosine of two atoms is
their cosine. For a signed SAE a latent's atom spans both d and -d, so a partner with |cos| near 1 duplicates
that axis whichever sign it has: the effective cosine is -|cos|. This makes every number invariant to negating
a signed latent (its atom's cosines change sign, |cos| does not), and counts the same redundancy for both
families. Only latents alive on the held-out activations (z != 0) are scored by default.

One normalised quantity means the same for every family: `frac_alive_in_axis_duplicate_pair`, the fraction of
*alive* latents (active, z != 0, at least once on the held-out activations) whose decoder axis is shared with
another alive latent (|cos| > threshold, either sign: an antiparallel split pair or a parallel duplicate), and
`axis_duplicate_pairs_per_alive`, such pairs per alive latent. Dead latents enter neither the pairs nor the
denominator, so neither moves with the number of dead latents (raw pair counts do not depend on it either, but
they grow with the number of alive latents and so cannot compare SAEs of different sizes or dead fractions).
"""

from __future__ import annotations

import numpy as np
import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.fragmentation.eval_config import FragmentationEvalConfig
from abstopk_eval.evals.fragmentation.eval_output import (
    AntiparallelMetrics,
    FragmentationEvalOutput,
    FragmentationMetricCategories,
    FragmentationResultDetail,
)
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.saes.signs import has_signed_latents

EVAL_NAME = "fragmentation"


@torch.no_grad()
def alive_latents(sae: SAE, activations: torch.Tensor, max_rows: int = 16384, batch_size: int = 4096) -> torch.Tensor:
    """Boolean [d_sae]: the latent is nonzero on at least one of the first `max_rows` activations."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for start in range(0, min(max_rows, activations.shape[0]), batch_size):
        x = activations[start : start + batch_size].to(sae.W_enc.device, torch.float32)
        fired |= (sae.encode(x) != 0).any(0).cpu()
    return fired


@torch.no_grad()
def effective_cosines(
    W_dec: torch.Tensor, signed: bool, thresholds: list[float], chunk: int = 2048
) -> dict[str, np.ndarray | dict]:
    """Per atom: most negative effective cosine to another atom; per threshold: pair counts and partner flags.

    Cosines are computed in row chunks (never the full [n, n] matrix).
    """
    W = torch.nn.functional.normalize(W_dec.float(), dim=-1)
    n = W.shape[0]
    most_negative = torch.empty(n)
    partner = {t: torch.zeros(n, dtype=torch.bool) for t in thresholds}
    duplicate = {t: torch.zeros(n, dtype=torch.bool) for t in thresholds}
    ordered_pairs = dict.fromkeys(thresholds, 0)
    parallel = dict.fromkeys(thresholds, 0)
    for start in range(0, n, chunk):
        cos = W[start : start + chunk] @ W.T
        rows = torch.arange(cos.shape[0])
        cos[rows, rows + start] = 0.0  # an atom is not its own partner
        eff = -cos.abs() if signed else cos
        most_negative[start : start + chunk] = eff.min(dim=1).values
        for t in thresholds:
            hit = eff < -t
            partner[t][start : start + chunk] = hit.any(dim=1)
            duplicate[t][start : start + chunk] = (cos.abs() > t).any(dim=1)
            ordered_pairs[t] += int(hit.sum())
            if not signed:
                parallel[t] += int((cos > t).sum())
    return {
        "most_negative": most_negative.numpy(),
        "partner": {t: p.numpy() for t, p in partner.items()},
        "duplicate": {t: p.numpy() for t, p in duplicate.items()},
        "pairs": {t: c // 2 for t, c in ordered_pairs.items()},
        "parallel": {t: c // 2 for t, c in parallel.items()},
    }


def _pair_stats(W: torch.Tensor, signed: bool, thresholds: list[float]) -> dict:
    if W.shape[0] >= 2:
        return effective_cosines(W, signed, thresholds)
    return {
        "most_negative": np.zeros(0),
        "partner": {t: np.zeros(0, bool) for t in thresholds},
        "duplicate": {t: np.zeros(0, bool) for t in thresholds},
        "pairs": dict.fromkeys(thresholds, 0),
        "parallel": dict.fromkeys(thresholds, 0),
    }


def score_sae(
    sae: SAE, alive: torch.Tensor, cfg: FragmentationEvalConfig
) -> tuple[AntiparallelMetrics, list[FragmentationResultDetail], dict]:
    """`alive` [d_sae] bool: the latents active on held-out data. The pair counts score the alive latents (all
    with `alive_only` false); the normalised fractions always divide by the alive latents alone."""
    thresholds = sorted({cfg.threshold, *cfg.extra_thresholds})
    signed = has_signed_latents(sae)
    W_all = sae.W_dec.detach().cpu()
    W = W_all[alive] if cfg.alive_only else W_all
    stats = _pair_stats(W, signed, thresholds)
    alive_stats = stats if cfg.alive_only else _pair_stats(W_all[alive], signed, thresholds)
    n_alive = int(alive.sum())
    alive_duplicate_pairs = int(alive_stats["pairs"][cfg.threshold] + alive_stats["parallel"][cfg.threshold])
    n = W.shape[0]
    frac = {t: float(stats["partner"][t].mean()) if n else 0.0 for t in thresholds}
    metrics = AntiparallelMetrics(
        n_antiparallel_pairs=int(stats["pairs"][cfg.threshold]),
        frac_atoms_in_antiparallel_pair=frac[cfg.threshold],
        mean_most_negative_cos=float(stats["most_negative"].mean()) if n else 0.0,
        n_parallel_pairs=int(stats["parallel"][cfg.threshold]),
        n_axis_duplicate_pairs=int(stats["pairs"][cfg.threshold] + stats["parallel"][cfg.threshold]),
        n_atoms_scored=n,
        n_alive=n_alive,
        frac_alive_in_axis_duplicate_pair=float(alive_stats["duplicate"][cfg.threshold].mean()) if n_alive else 0.0,
        axis_duplicate_pairs_per_alive=alive_duplicate_pairs / n_alive if n_alive else 0.0,
        signed_latents=signed,
    )
    details = [
        FragmentationResultDetail(
            threshold=t, n_antiparallel_pairs=int(stats["pairs"][t]), frac_atoms_in_antiparallel_pair=frac[t]
        )
        for t in thresholds
    ]
    # clipped: float rounding puts exact opposites at -1 - 1e-7, and the last bin takes everything above 0.2
    counts, edges = np.histogram(np.clip(stats["most_negative"], -1.0, 0.2), bins=cfg.histogram_bins, range=(-1.0, 0.2))
    histogram = {
        "bin_edges": edges.round(4).tolist(),
        "counts": counts.tolist(),
        "quantity": "most negative effective cosine per scored atom",
    }
    return metrics, details, histogram


def run_fragmentation(
    ctx: EvalContext, saes: dict[str, SAE], config: FragmentationEvalConfig | None = None
) -> dict[str, FragmentationEvalOutput]:
    cfg = resolve_config(FragmentationEvalConfig, ctx, EVAL_NAME, config)
    acts = ctx.heldout_activations()  # alive latents normalise every fraction, whatever alive_only says
    outputs = {}
    for sae_id, sae in tqdm(saes.items(), desc="fragmentation", unit="sae"):
        alive = alive_latents(sae, acts)
        metrics, details, histogram = score_sae(sae, alive, cfg)
        outputs[sae_id] = FragmentationEvalOutput(
            eval_config=cfg,
            eval_result_metrics=FragmentationMetricCategories(antiparallel=metrics),
            eval_result_details=details,
            eval_result_unstructured={"histogram": histogram},
            **output_common(ctx, sae_id, sae),
        )
    return outputs


FRAGMENTATION = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=FragmentationEvalConfig,
        output_cls=FragmentationEvalOutput,
        description="decoder atoms in nearly antiparallel pairs (a bipolar axis split in two), sign-invariant for "
        "signed SAEs",
        run=run_fragmentation,
    )
)
