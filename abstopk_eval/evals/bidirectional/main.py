"""The paper's Figure 1 as a measurement: does one latent take opposite signs on the two poles of a concept?

Data: minimal pairs on bipolar axes (`abstopk_eval.data.bipolar_pairs`), in sentences ("context") and as bare
words after the start token ("alone"). Pair i gives the layer-L activations x_A, x_B at the one differing token
and the SAE's latents z_A, z_B there. Per axis and context, with dx_i = x_A - x_B, the contrast direction
u = mean(dx) / ||mean(dx)|| and the latent's effective decoder row D_j = decode(e_j) - decode(0)
(`pooled.decoder_rows`):

- **share** of latent j: its decoder-weighted part of the contrast along u,
  share_j = sum_i (z_A - z_B)_ij (D_j . u) / sum_i (dx_i . u). The shares of all latents sum to the part of the
  contrast the SAE's reconstruction carries (decode is affine, so b_dec cancels); 1 means latent j alone accounts
  for the whole mean contrast (a share can exceed 1 or be negative where latents cancel one another).
- **sign consistency** of latent j: among the pairs where it is active (z != 0) on either pole, the fraction
  where sign(z_A) = +s and sign(z_B) = -s, for the better orientation s in {+1, -1} (ties: the sign of
  sum(z_A - z_B)). A non-negative (ReLU / TopK / JumpReLU) latent never takes opposite signs, so its
  consistency is 0 by construction: such SAEs can carry a bipolar axis only with two latents, reported apart as
  the **split share** (below), never as a bidirectional one.
- **bidirectional share** of latent j = consistency_j x max(share_j, 0); the axis's *best latent* maximises it
  (ties: the larger share), searched over all latents. Its share, consistency and coverage (fraction of pairs
  where it is active) are reported with it.
- **split share**: the best pole-A-only latent (active on A and zero on B, as a fraction of its active pairs,
  times max(share, 0)) plus the best pole-B-only latent: the two-atom account of the axis.
- **shuffled-pole control**: the poles of a random half of the pairs are swapped (seeded) and the search is
  redone over all latents, shares still measured against the real contrast (u and sum(dx . u) unshuffled). A
  bipolar latent's consistency then falls to ~0.5 and its share to ~0, so the control's bidirectional share is the
  level chance reaches with this many pairs and latents.

Intervals: 95% percentile bootstrap over pairs with the best latent fixed (selection not redone, so the
interval is conditional on the chosen latent); pooled values are means over axes, their bootstrap resamples every
axis's pairs. An axis counts as held by one signed latent when its interval lies above the control's and its
bidirectional share is at least `min_share` (above chance alone is not enough: a latent carrying 0.4% of the
contrast with consistent signs can clear a control near 0).
Every quantity is unchanged by negating a signed latent (z and D_j flip together; s flips with them).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from abstopk_eval.data.bipolar_pairs import AXES, CONTEXTS, PairInstance, build_instances
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bidirectional.eval_config import BidirectionalEvalConfig
from abstopk_eval.evals.bidirectional.eval_output import (
    AxisDetail,
    BidirectionalEvalOutput,
    BidirectionalMetricCategories,
    BidirectionalMetrics,
)
from abstopk_eval.evals.bootstrap import percentile_interval, resample_counts
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.evals.pooled import decoder_rows
from abstopk_eval.models.pass_cache import cached_pass, tensor_digest

EVAL_NAME = "bidirectional"


PAIRS_KIND = "bidirectional-pairs"


def pair_activations(adapter, layer: int, instances: list[PairInstance]) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] activations at the differing token for pole A and pole B. SAE-independent, so stored in the
    adapter's pass cache (`models.pass_cache`) where it has one, keyed by every pair's ids and position."""
    ids = torch.tensor([t for inst in instances for side in (0, 1) for t in inst.ids[side]], dtype=torch.long)
    lengths = torch.tensor([len(inst.ids[0]) for inst in instances], dtype=torch.long)
    positions = torch.tensor([inst.position for inst in instances], dtype=torch.long)
    key = {"ids": tensor_digest(ids, lengths, positions)}
    got = cached_pass(adapter, PAIRS_KIND, layer, key, lambda: _pair_activations(adapter, layer, instances))
    return got["a"], got["b"]


@torch.no_grad()
def _pair_activations(adapter, layer: int, instances: list[PairInstance]) -> dict[str, torch.Tensor]:
    """One model call per sequence length (the two poles of a pair have the same length)."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, inst in enumerate(instances):
        by_length[len(inst.ids[0])].append(i)
    d = adapter.d_model
    acts_a, acts_b = torch.zeros(len(instances), d), torch.zeros(len(instances), d)
    for _length, idx in sorted(by_length.items()):
        ids = torch.tensor([instances[i].ids[side] for i in idx for side in (0, 1)], device=adapter.device)
        hidden = adapter.activations(ids, layer).cpu()
        pos = torch.tensor([instances[i].position for i in idx])
        rows = torch.arange(len(idx))
        acts_a[idx] = hidden[2 * rows, pos]
        acts_b[idx] = hidden[2 * rows + 1, pos]
    return {"a": acts_a, "b": acts_b}


@dataclass(frozen=True)
class PairStats:
    """Per-pair sums behind every ratio of one axis ([n, d_sae] unless noted), so a bootstrap reweights pairs."""

    num: np.ndarray
    """(z_A - z_B) (D_j . u): latent j's part of pair i's contrast along u."""
    den: np.ndarray
    """[n] dx_i . u (always from the unshuffled pairs)."""
    opposite: np.ndarray
    """Pairs with opposite signs in latent j's orientation s_j."""
    active: np.ndarray
    """Pairs where latent j is nonzero on either pole."""
    only_a: np.ndarray
    only_b: np.ndarray
    orientation: np.ndarray
    """[d_sae] s_j."""


def pair_stats(z_a: np.ndarray, z_b: np.ndarray, proj: np.ndarray, den: np.ndarray) -> PairStats:
    dz = z_a - z_b
    pos = (z_a > 0) & (z_b < 0)
    neg = (z_a < 0) & (z_b > 0)
    n_pos, n_neg = pos.sum(0), neg.sum(0)
    orientation = np.where(n_pos > n_neg, 1.0, np.where(n_neg > n_pos, -1.0, np.where(dz.sum(0) >= 0, 1.0, -1.0)))
    on_a, on_b = z_a != 0, z_b != 0
    return PairStats(
        num=dz * proj,
        den=den,
        opposite=np.where(orientation > 0, pos, neg),
        active=on_a | on_b,
        only_a=on_a & ~on_b,
        only_b=on_b & ~on_a,
        orientation=orientation,
    )


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.divide(top, bottom, out=np.zeros(np.broadcast(top, bottom).shape), where=bottom != 0)


def latent_scores(stats: PairStats, w: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """share, consistency, score (bidirectional share), one-pole scores per latent; w: weights over pairs ([n] or
    [R, n] bootstrap counts), default all ones."""
    w = np.ones(stats.den.shape[0]) if w is None else w
    share = _ratio(w @ stats.num, (w @ stats.den)[..., None] if w.ndim > 1 else w @ stats.den)
    active = w @ stats.active
    consistency = _ratio(w @ stats.opposite, active)
    positive = np.maximum(share, 0.0)
    return {
        "share": share,
        "consistency": consistency,
        "score": consistency * positive,
        "only_a": _ratio(w @ stats.only_a, active) * positive,
        "only_b": _ratio(w @ stats.only_b, active) * positive,
        "coverage": _ratio(active, np.asarray(w.sum(-1))[..., None] if w.ndim > 1 else w.sum()),
    }


def best_latent(scores: dict[str, np.ndarray]) -> int:
    """Largest bidirectional share, ties broken by the larger share."""
    return int(np.lexsort((scores["share"], scores["score"]))[-1])


@dataclass(frozen=True)
class AxisScore:
    detail: AxisDetail
    samples: np.ndarray
    """[R] bootstrap samples of the best latent's bidirectional share."""
    control_samples: np.ndarray
    split: float


def score_axis(
    name: str,
    poles: tuple[str, str],
    context: str,
    z_a: np.ndarray,
    z_b: np.ndarray,
    x_a: np.ndarray,
    x_b: np.ndarray,
    decoder: np.ndarray,
    cfg: BidirectionalEvalConfig,
    seed: int,
) -> AxisScore:
    """Score one axis in one context from its pairs' latents ([n, d_sae]) and activations ([n, d])."""
    dx = x_a - x_b
    mean = dx.mean(0)
    u = mean / max(float(np.linalg.norm(mean)), 1e-12)
    den, proj = dx @ u, decoder @ u
    stats = pair_stats(z_a, z_b, proj, den)
    scores = latent_scores(stats)
    j = best_latent(scores)
    a, b = int(np.argmax(scores["only_a"])), int(np.argmax(scores["only_b"]))
    rng = np.random.default_rng(seed)
    swap = rng.random(z_a.shape[0]) < 0.5
    sz_a, sz_b = np.where(swap[:, None], z_b, z_a), np.where(swap[:, None], z_a, z_b)
    control = pair_stats(sz_a, sz_b, proj, den)  # den: the real contrast
    control_scores = latent_scores(control)
    c = best_latent(control_scores)
    counts = resample_counts(z_a.shape[0], cfg.n_bootstrap, seed).numpy()
    samples = _one_latent_scores(stats, j, counts)
    control_samples = _one_latent_scores(control, c, counts)
    low, high = percentile_interval(torch.from_numpy(samples))
    s = float(stats.orientation[j])
    detail = AxisDetail(
        axis=name,
        poles=list(poles),
        context=context,
        n_pairs=int(z_a.shape[0]),
        best_latent=j,
        bidirectional_share=float(scores["score"][j]),
        ci_low=low,
        ci_high=high,
        share=float(scores["share"][j]),
        sign_consistency=float(scores["consistency"][j]),
        coverage=float(scores["coverage"][j]),
        mean_a=s * float(z_a[:, j].mean()),
        mean_b=s * float(z_b[:, j].mean()),
        control_share=float(control_scores["score"][c]),
        control_ci_high=percentile_interval(torch.from_numpy(control_samples))[1],
        control_sign_consistency=float(control_scores["consistency"][c]),
        split_latents=[a, b],
        split_share=float(scores["only_a"][a] + scores["only_b"][b]),
    )
    return AxisScore(detail, samples, control_samples, detail.split_share)


def _one_latent_scores(stats: PairStats, j: int, counts: np.ndarray) -> np.ndarray:
    one = PairStats(
        num=stats.num[:, [j]],
        den=stats.den,
        opposite=stats.opposite[:, [j]],
        active=stats.active[:, [j]],
        only_a=stats.only_a[:, [j]],
        only_b=stats.only_b[:, [j]],
        orientation=stats.orientation[[j]],
    )
    return latent_scores(one, counts)["score"][:, 0]


def held_by_one_latent(detail: AxisDetail, min_share: float) -> bool:
    """The axis's bidirectional share is both above chance (interval above the control's) and large enough."""
    return detail.ci_low > detail.control_ci_high and detail.bidirectional_share >= min_share


def summarise(scored: dict[str, list[AxisScore]], min_share: float) -> BidirectionalMetrics:
    """Pooled metrics: means over axes, per context, with bootstrap intervals."""

    def pooled(rows: list[AxisScore], attr: str) -> np.ndarray:
        return np.mean([getattr(r, attr) for r in rows], axis=0)

    ctx = scored.get("context", [])
    alone = scored.get("alone", [])
    low = high = control_high = 0.0
    if ctx:
        low, high = percentile_interval(torch.from_numpy(pooled(ctx, "samples")))
        control_high = percentile_interval(torch.from_numpy(pooled(ctx, "control_samples")))[1]
    mean = lambda rows, key: float(np.mean([getattr(r.detail, key) for r in rows])) if rows else 0.0  # noqa: E731
    return BidirectionalMetrics(
        bidirectional_share=mean(ctx, "bidirectional_share"),
        bidirectional_share_ci_low=low,
        bidirectional_share_ci_high=high,
        control_share=mean(ctx, "control_share"),
        control_share_ci_high=control_high,
        mean_sign_consistency=mean(ctx, "sign_consistency"),
        mean_contrast_share=mean(ctx, "share"),
        split_share=mean(ctx, "split_share"),
        frac_axes_bidirectional=float(np.mean([held_by_one_latent(r.detail, min_share) for r in ctx])) if ctx else 0.0,
        bidirectional_share_alone=mean(alone, "bidirectional_share") if alone else None,
        control_share_alone=mean(alone, "control_share") if alone else None,
        n_axes=len(ctx),
        n_pairs=sum(r.detail.n_pairs for r in ctx),
        n_pairs_alone=sum(r.detail.n_pairs for r in alone),
    )


def run_bidirectional(
    ctx: EvalContext, saes: dict[str, SAE], config: BidirectionalEvalConfig | None = None
) -> dict[str, BidirectionalEvalOutput]:
    cfg = resolve_config(BidirectionalEvalConfig, ctx, EVAL_NAME, config)
    unknown = sorted(set(cfg.contexts) - set(CONTEXTS))
    if unknown:
        raise UserError(f"unknown bidirectional context(s) {', '.join(unknown)}; known: {', '.join(CONTEXTS)}")
    instances, counts = build_instances(ctx.adapter.tokenizer, cfg.axes or None, tuple(cfg.contexts))  # type: ignore[arg-type]
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, inst in enumerate(instances):
        groups[(inst.axis, inst.context)].append(i)
    groups = {key: idx for key, idx in groups.items() if len(idx) >= cfg.min_instances}
    if not groups:
        raise UserError(f"no bipolar axis kept {cfg.min_instances}+ single-token minimal pairs under this tokenizer")
    acts_a, acts_b = pair_activations(ctx.adapter, ctx.layer, instances)
    x_a, x_b = acts_a.numpy().astype(np.float64), acts_b.numpy().astype(np.float64)
    poles = {a.name: a.poles for a in AXES}
    order = {a.name: n for n, a in enumerate(AXES)}
    keys = sorted(groups, key=lambda k: (CONTEXTS.index(k[1]), order[k[0]]))  # type: ignore[arg-type]
    outputs = {}
    for sae_id, sae in tqdm(saes.items(), desc="bidirectional", unit="sae"):
        with torch.no_grad():
            dev = sae.W_enc.device
            z_a = sae.encode(acts_a.to(dev)).double().cpu().numpy()
            z_b = sae.encode(acts_b.to(dev)).double().cpu().numpy()
        decoder = decoder_rows(sae)
        scored: dict[str, list[AxisScore]] = defaultdict(list)
        for n, (axis, context) in enumerate(keys):
            idx = groups[(axis, context)]
            scored[context].append(
                score_axis(
                    axis,
                    poles[axis],
                    context,
                    z_a[idx],
                    z_b[idx],
                    x_a[idx],
                    x_b[idx],
                    decoder,
                    cfg,
                    cfg.seed + n,
                )
            )
        metrics = summarise(scored, cfg.min_share)
        outputs[sae_id] = BidirectionalEvalOutput(
            eval_config=cfg,
            eval_result_metrics=BidirectionalMetricCategories(bidirectional=metrics),
            eval_result_details=[r.detail for context in CONTEXTS for r in scored.get(context, [])],
            eval_result_unstructured={
                "bootstrap_ci95": {
                    "bidirectional_share": [metrics.bidirectional_share_ci_low, metrics.bidirectional_share_ci_high]
                },
                "pairs_per_axis": counts,
                "data": "abstopk_eval/data/bipolar_pairs.py (written for this project)",
            },
            **output_common(ctx, sae_id, sae),
        )
    return outputs


BIDIRECTIONAL = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=BidirectionalEvalConfig,
        output_cls=BidirectionalEvalOutput,
        description="Figure 1 study: per bipolar axis, the latent with consistent opposite signs on the two poles, "
        "its share of the contrast, against a shuffled-pole control",
        run=run_bidirectional,
    )
)
