"""Core metrics: reconstruction (nMSE, FVU), sign-correct sparsity, and spliced-in model loss / KL.

All SAEs of a run are scored from the same language-model passes: per batch of held-out sequences we
run the clean model once (its logits are the KL reference; cached on disk, `core.passes`), then the zero-ablated
model and one spliced pass per SAE, each running only the blocks after the layer from the clean residual there.
The special positions of `models.sequence_start` (each sequence's first position, which is the BOS where there is
one, and GPT-2 / Pythia's `<|endoftext|>`) keep their original activation in the splice and the zero-ablation (as
sae_bench's core eval does with `exclude_special_tokens_from_reconstruction`), since SAEs are trained without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sae_bench.evals.core.eval_output import (
    ModelBehaviorPreservationMetrics,
    ModelPerformancePreservationMetrics,
    ReconstructionQualityMetrics,
    ShrinkageMetrics,
    TokenStatsMetrics,
)
from sae_lens import SAE
from tqdm.auto import tqdm

from abstopk_eval.evals.bootstrap import block_sums, percentile_interval, resample_counts, weighted_sums
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.core import passes
from abstopk_eval.evals.core.eval_config import CoreEvalConfig
from abstopk_eval.evals.core.eval_output import (
    BootstrapIntervals,
    CoreEvalOutput,
    CoreMetricCategories,
    NormalisedReconstructionMetrics,
    SignedSparsityMetrics,
)
from abstopk_eval.evals.options import resolve_config

EVAL_NAME = "core"


@dataclass
class _LossTotals:
    ce: float = 0.0
    kl: float = 0.0
    n: int = 0
    ce_per_seq: list[torch.Tensor] = field(default_factory=list)
    """Per-sequence CE sums, one tensor per batch (the bootstrap unit is a sequence)."""
    kl_per_seq: list[torch.Tensor] = field(default_factory=list)

    def add(self, ce: torch.Tensor, kl: torch.Tensor | None = None) -> None:
        """Accumulate per-position CE (and KL) of a [B, T-1] batch."""
        self.ce += float(ce.sum())
        self.n += ce.numel()
        self.ce_per_seq.append(ce.sum(-1).double().cpu())
        if kl is not None:
            self.kl += float(kl.sum())
            self.kl_per_seq.append(kl.sum(-1).double().cpu())


@dataclass
class _ReconTotals:
    """Running sums over held-out activation rows."""

    d_sae: int
    block: int
    """Rows per bootstrap block (one sequence's worth of contiguous activations)."""
    n: int = 0
    sq_err: float = 0.0
    sq_norm: float = 0.0
    sum_x: torch.Tensor | None = None
    cos: float = 0.0
    norm_in: float = 0.0
    norm_out: float = 0.0
    dot_xhat_x: float = 0.0
    sq_xhat: float = 0.0
    l0: float = 0.0
    l1: float = 0.0
    n_negative: float = 0.0
    fires: torch.Tensor = field(default=None)  # type: ignore[assignment]
    err_rows: list[torch.Tensor] = field(default_factory=list)
    """Per-row ||x - x_hat||^2 and ||x||^2 and per-block sums of x, for the bootstrap."""
    norm_rows: list[torch.Tensor] = field(default_factory=list)
    x_blocks: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64)


@torch.no_grad()
def reconstruction_stats(sae: SAE, activations: torch.Tensor, batch_size: int = 4096, block: int = 128) -> _ReconTotals:
    """Reconstruction and sparsity sums of `sae` on activation rows (activity is z != 0)."""
    tot = _ReconTotals(d_sae=sae.cfg.d_sae, block=block)
    batch_size = max(block, batch_size // block * block)  # batches hold whole blocks
    for start in range(0, activations.shape[0], batch_size):
        x = activations[start : start + batch_size].to(sae.W_enc.device, torch.float32)
        z = sae.encode(x)
        x_hat = sae.decode(z)
        active = z != 0
        err = (x_hat - x).pow(2).sum(-1)
        sq_norm = x.pow(2).sum(-1)
        tot.n += x.shape[0]
        tot.sq_err += float(err.sum())
        tot.sq_norm += float(sq_norm.sum())
        tot.sum_x = x.sum(0).double().cpu() if tot.sum_x is None else tot.sum_x + x.sum(0).double().cpu()
        tot.cos += float(F.cosine_similarity(x_hat, x, dim=-1).sum())
        tot.norm_in += float(x.norm(dim=-1).sum())
        tot.norm_out += float(x_hat.norm(dim=-1).sum())
        tot.dot_xhat_x += float((x_hat * x).sum())
        tot.sq_xhat += float(x_hat.pow(2).sum())
        tot.l0 += float(active.sum())
        tot.l1 += float(z.abs().sum())
        tot.n_negative += float((z < 0).sum())
        tot.fires += active.sum(0).double().cpu()
        tot.err_rows.append(err.double().cpu())
        tot.norm_rows.append(sq_norm.double().cpu())
        tot.x_blocks.append(block_sums(x.double().cpu(), block))
    return tot


def _splice_fn(sae: SAE | None, keep: torch.Tensor):
    """Replacement for the layer output: SAE reconstruction (or zeros when sae is None) except where keep."""

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        if sae is None:
            new = torch.zeros_like(hidden)
        else:
            new = sae.decode(sae.encode(hidden.float())).to(hidden.dtype)
        return torch.where(keep.unsqueeze(-1), hidden, new)

    return fn


def _ce_and_kl(
    logits: torch.Tensor, tokens: torch.Tensor, clean_p: torch.Tensor, clean_neg_entropy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token CE and KL(clean || this) per position, sharing one logsumexp over the vocabulary.

    KL = sum_v p_clean (log p_clean - logits + lse) = -H(p_clean) - <p_clean, logits> + lse, which avoids
    materialising a log-softmax of the [B, T, vocab] logits for every SAE.
    """
    scores = logits[:, :-1].float()
    lse = torch.logsumexp(scores, dim=-1)
    ce = lse - scores.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    kl = clean_neg_entropy - torch.linalg.vecdot(clean_p, scores) + lse
    return ce, kl


@torch.no_grad()
def loss_stats(ctx: EvalContext, saes: dict[str, SAE]) -> tuple[_LossTotals, _LossTotals, dict[str, _LossTotals]]:
    """CE / KL of the clean model, the zero-ablated model and every spliced SAE, on ctx.eval_tokens.

    The clean pass of each batch is SAE-independent and cached (`core.passes.clean_pass`); the zero-ablation and
    every SAE run only the blocks after the layer, from the clean residual there (`core.passes.spliced_losses`)."""
    adapter, tokens = ctx.adapter, ctx.eval_tokens
    clean, zero = _LossTotals(), _LossTotals()
    spliced = {name: _LossTotals() for name in saes}
    special = adapter.sequence_start  # the one sequence-start rule (models.sequence_start)
    for start in tqdm(range(0, tokens.shape[0], ctx.batch_size), desc="core: CE/KL passes", unit="batch"):
        batch = tokens[start : start + ctx.batch_size].to(ctx.device)
        keep = special.special_mask(batch)
        base = passes.clean_pass(adapter, batch, ctx.layer)
        clean.add(base.ce)
        fallback = passes.CleanDistribution()
        for name, sae in [(None, None), *saes.items()]:
            resid = _splice_fn(sae, keep)(base.resid)
            tot = zero if name is None else spliced[name]
            tot.add(*passes.spliced_losses(adapter, batch, ctx.layer, base, resid, fallback))
    return clean, zero, spliced


def bootstrap_intervals(
    recon: _ReconTotals, clean: _LossTotals, zero: _LossTotals, spl: _LossTotals, n_resamples: int, seed: int
) -> BootstrapIntervals:
    """Percentile intervals of nMSE / FVU (resampling row blocks) and CE / KL / loss recovered (resampling
    sequences); the counts depend only on the seed and the data size, so every SAE sees the same resamples."""
    err_rows, norm_rows = torch.cat(recon.err_rows), torch.cat(recon.norm_rows)
    err = block_sums(err_rows, recon.block)
    norm = block_sums(norm_rows, recon.block)
    ratio = block_sums(err_rows / norm_rows.clamp_min(1e-30), recon.block)
    x_sum = torch.cat(recon.x_blocks)
    rows = block_sums(torch.ones(recon.n), recon.block)
    counts = resample_counts(len(err), n_resamples, seed)
    tot_err, tot_norm, tot_x, tot_rows, tot_ratio = (weighted_sums(counts, v) for v in (err, norm, x_sum, rows, ratio))
    nmse = tot_err / tot_norm
    fvu = tot_err / (tot_norm - tot_x.pow(2).sum(-1) / tot_rows)

    ce_clean, ce_zero, ce_sae, kl_sae = (
        torch.cat(v) for v in (clean.ce_per_seq, zero.ce_per_seq, spl.ce_per_seq, spl.kl_per_seq)
    )
    seq_counts = resample_counts(len(ce_sae), n_resamples, seed + 1)
    tokens_per_seq = torch.full((len(ce_sae),), spl.n / len(ce_sae), dtype=torch.float64)
    t_clean, t_zero, t_sae, t_kl, t_tokens = (
        weighted_sums(seq_counts, v) for v in (ce_clean, ce_zero, ce_sae, kl_sae, tokens_per_seq)
    )
    intervals = {
        "nmse": nmse,
        "nmse_per_token_mean": tot_ratio / tot_rows,
        "fvu": fvu,
        "loss_recovered": (t_zero - t_sae) / (t_zero - t_clean),
        "ce_loss_with_sae": t_sae / t_tokens,
        "kl_div_with_sae": t_kl / t_tokens,
    }
    fields: dict[str, float] = {}
    for name, samples in intervals.items():
        fields[f"{name}_low"], fields[f"{name}_high"] = percentile_interval(samples)
    return BootstrapIntervals(**fields, n_resamples=n_resamples, n_sequences=len(ce_sae), n_row_blocks=len(err))


def _output(
    ctx: EvalContext,
    sae_id: str,
    sae: SAE,
    recon: _ReconTotals,
    clean: _LossTotals,
    zero: _LossTotals,
    spl: _LossTotals,
    config: CoreEvalConfig,
) -> CoreEvalOutput:
    n = max(recon.n, 1)
    mean = recon.sum_x / n
    total_var = recon.sq_norm - n * float(mean.pow(2).sum())
    fvu = recon.sq_err / total_var
    ce_clean, ce_zero, ce_sae = clean.ce / clean.n, zero.ce / zero.n, spl.ce / spl.n
    kl_zero, kl_sae = zero.kl / zero.n, spl.kl / spl.n
    density = recon.fires / n
    dead = float((recon.fires == 0).float().mean())
    info = ctx.training_info.get(sae_id, {})
    metrics = CoreMetricCategories(
        model_behavior_preservation=ModelBehaviorPreservationMetrics(
            kl_div_score=(kl_zero - kl_sae) / kl_zero, kl_div_with_ablation=kl_zero, kl_div_with_sae=kl_sae
        ),
        model_performance_preservation=ModelPerformancePreservationMetrics(
            ce_loss_score=(ce_zero - ce_sae) / (ce_zero - ce_clean),
            ce_loss_with_ablation=ce_zero,
            ce_loss_with_sae=ce_sae,
            ce_loss_without_sae=ce_clean,
        ),
        reconstruction_quality=ReconstructionQualityMetrics(
            explained_variance=1 - fvu,
            explained_variance_legacy=1 - recon.sq_err / recon.sq_norm,
            mse=recon.sq_err / (n * sae.cfg.d_in),
            cossim=recon.cos / n,
        ),
        normalised_reconstruction=NormalisedReconstructionMetrics(
            nmse=recon.sq_err / recon.sq_norm,
            fvu=fvu,
            loss_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean),
            nmse_per_token_mean=float((torch.cat(recon.err_rows) / torch.cat(recon.norm_rows).clamp_min(1e-30)).mean()),
        ),
        shrinkage=ShrinkageMetrics(
            l2_norm_in=recon.norm_in / n,
            l2_norm_out=recon.norm_out / n,
            l2_ratio=recon.norm_out / recon.norm_in,
            relative_reconstruction_bias=recon.sq_xhat / recon.dot_xhat_x,
        ),
        sparsity=SignedSparsityMetrics(
            l0=recon.l0 / n,
            l1=recon.l1 / n,
            frac_negative=recon.n_negative / max(recon.l0, 1.0),
            dead_fraction=dead,
            frac_alive=1 - dead,
            freq_over_1_percent=float((density > 0.01).float().mean()),
            freq_over_10_percent=float((density > 0.10).float().mean()),
        ),
        token_stats=TokenStatsMetrics(
            total_tokens_eval_reconstruction=clean.n, total_tokens_eval_sparsity_variance=recon.n
        ),
        bootstrap_ci95=bootstrap_intervals(recon, clean, zero, spl, config.n_bootstrap, config.bootstrap_seed),
    )
    return CoreEvalOutput(
        eval_config=config,
        eval_result_metrics=metrics,
        eval_result_unstructured={
            "training_curve": info.get("curve", []),
            "train_seconds": info.get("train_seconds"),
            "train_tokens": info.get("tokens"),
            "latent_density_quantiles": {q: float(density.quantile(q)) for q in (0.1, 0.5, 0.9, 0.99)},
        },
        **output_common(ctx, sae_id, sae),
    )


def run_core(ctx: EvalContext, saes: dict[str, SAE], config: CoreEvalConfig | None = None) -> dict[str, CoreEvalOutput]:
    acts = ctx.heldout_activations()
    tokens = ctx.eval_tokens
    config = resolve_config(
        CoreEvalConfig,
        ctx,
        EVAL_NAME,
        config,
        dataset=ctx.dataset,
        context_size=int(tokens.shape[1]),
        n_ce_tokens=int(tokens.shape[0]) * (int(tokens.shape[1]) - 1),  # every next-token position
        n_sparsity_tokens=int(acts.shape[0]),
    )
    block = int(tokens.shape[1]) - 1  # activation rows per held-out sequence (BOS excluded)
    recon = {
        name: reconstruction_stats(sae, acts, block=block)
        for name, sae in tqdm(saes.items(), desc="core: reconstruction", unit="sae")
    }
    clean, zero, spliced = loss_stats(ctx, saes)
    return {
        name: _output(ctx, name, sae, recon[name], clean, zero, spliced[name], config) for name, sae in saes.items()
    }


CORE = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=CoreEvalConfig,
        output_cls=CoreEvalOutput,
        description="nMSE, FVU, L0 (!= 0), dead and negative fractions, CE / loss recovered / KL with the SAE "
        "spliced in",
        run=run_core,
    )
)
