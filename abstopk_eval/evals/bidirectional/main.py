"""The paper's Figure 1 as a measurement: minimal sentence pairs on bipolar axes, scored per SAE.

For each axis, every kept minimal pair gives the layer-L activation at the one differing token for pole A
and pole B, and the SAE's latents z_A, z_B there. The axis's top latent j* maximises |mean(z_A - z_B)|.
- bidirectional: j* takes opposite nonzero signs on the two sides in at least `bipolar_fraction` of pairs
  (one signed latent carries both poles; only possible for signed SAEs);
- split: otherwise, j* responds to one pole (r_j = mean(|z_A[j]| - |z_B[j]|) has a sign) and another latent
  responds to the other pole with at least `split_ratio` of j*'s contrast;
- one-sided: only one pole has a latent of its own; none: no latent differs.
Every rule uses |z| or products of signs, so the categories are invariant to negating a signed latent; the
reported mean activations are oriented so that mean(z_A - z_B) > 0 for the same reason.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from abstopk_eval.data.bipolar_pairs import AXES, PairInstance, build_instances
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bidirectional.eval_config import BidirectionalEvalConfig
from abstopk_eval.evals.bidirectional.eval_output import (
    AxisDetail,
    BidirectionalEvalOutput,
    BidirectionalMetricCategories,
    BidirectionalMetrics,
)
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.options import resolve_config

EVAL_NAME = "bidirectional"


@torch.no_grad()
def pair_activations(adapter, layer: int, instances: list[PairInstance]) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] activations at the differing token for pole A and pole B, one model call per sentence length."""
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
    return acts_a, acts_b


def score_axis(
    name: str, poles: tuple[str, str], z_a: np.ndarray, z_b: np.ndarray, cfg: BidirectionalEvalConfig
) -> AxisDetail:
    """Classify one axis from its pairs' latents z_a, z_b ([pairs, d_sae])."""
    contrast = (z_a - z_b).mean(0)
    top = int(np.abs(contrast).argmax())
    opposite = float(((z_a[:, top] * z_b[:, top]) < 0).mean())
    orient = 1.0 if contrast[top] >= 0 else -1.0
    response = (np.abs(z_a) - np.abs(z_b)).mean(0)  # > 0: the latent responds to pole A
    strength = abs(float(contrast[top]))
    partner, category = -1, "none"
    if strength > 0:
        if opposite >= cfg.bipolar_fraction:
            category = "bidirectional"
        else:
            other_pole = -np.sign(response[top]) if response[top] != 0 else -orient
            candidates = other_pole * response
            candidates[top] = -np.inf
            partner = int(candidates.argmax())
            if candidates[partner] > 0 and candidates[partner] >= cfg.split_ratio * strength:
                category = "split"
            else:
                category, partner = "one-sided", -1
    # shown orientation of the top latent, invariant to negating it: its dominant sign over both poles positive
    # (so a non-negative latent keeps its raw values); a near-symmetric (bidirectional) latent shows pole A positive
    level = float((z_a[:, top] + z_b[:, top]).mean())
    shown = (1.0 if level > 0 else -1.0) if abs(level) > 0.1 * strength else orient
    return AxisDetail(
        axis=name,
        poles=list(poles),
        n_pairs=int(z_a.shape[0]),
        category=category,
        top_latent=top,
        opposite_sign_fraction=opposite,
        top_mean_a=shown * float(z_a[:, top].mean()),
        top_mean_b=shown * float(z_b[:, top].mean()),
        partner_latent=partner,
        partner_mean_a=float(np.abs(z_a[:, partner]).mean()) if partner >= 0 else 0.0,
        partner_mean_b=float(np.abs(z_b[:, partner]).mean()) if partner >= 0 else 0.0,
    )


def summarise(details: list[AxisDetail]) -> BidirectionalMetrics:
    n = max(len(details), 1)
    count = lambda c: sum(d.category == c for d in details) / n  # noqa: E731
    return BidirectionalMetrics(
        frac_axes_bidirectional=count("bidirectional"),
        frac_axes_split=count("split"),
        frac_axes_one_sided=count("one-sided"),
        mean_opposite_sign_fraction=float(np.mean([d.opposite_sign_fraction for d in details])) if details else 0.0,
        n_axes=len(details),
        n_pairs=sum(d.n_pairs for d in details),
    )


def run_bidirectional(
    ctx: EvalContext, saes: dict[str, SAE], config: BidirectionalEvalConfig | None = None
) -> dict[str, BidirectionalEvalOutput]:
    cfg = resolve_config(BidirectionalEvalConfig, ctx, EVAL_NAME, config)
    instances, counts = build_instances(ctx.adapter.tokenizer, cfg.axes or None)
    by_axis: dict[str, list[int]] = defaultdict(list)
    for i, inst in enumerate(instances):
        by_axis[inst.axis].append(i)
    scored = {name: idx for name, idx in by_axis.items() if len(idx) >= cfg.min_instances}
    if not scored:
        raise UserError(f"no bipolar axis kept {cfg.min_instances}+ single-token minimal pairs under this tokenizer")
    acts_a, acts_b = pair_activations(ctx.adapter, ctx.layer, instances)
    poles = {a.name: a.poles for a in AXES}
    outputs = {}
    for sae_id, sae in tqdm(saes.items(), desc="bidirectional", unit="sae"):
        with torch.no_grad():
            dev = sae.W_enc.device
            z_a = sae.encode(acts_a.to(dev)).cpu().numpy()
            z_b = sae.encode(acts_b.to(dev)).cpu().numpy()
        details = [score_axis(name, poles[name], z_a[idx], z_b[idx], cfg) for name, idx in scored.items()]
        outputs[sae_id] = BidirectionalEvalOutput(
            eval_config=cfg,
            eval_result_metrics=BidirectionalMetricCategories(bidirectional=summarise(details)),
            eval_result_details=details,
            eval_result_unstructured={
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
        description="Figure 1 case study: per bipolar axis, one signed latent or two split latents",
        run=run_bidirectional,
    )
)
