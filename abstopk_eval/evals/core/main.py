"""Core metrics: reconstruction (nMSE, FVU), sign-correct sparsity, and spliced-in model loss / KL.

All SAEs of a run are scored from the same language-model passes: per batch of held-out sequences we
run the clean model once (its logits are the KL reference; cached on disk, `core.passes`), then the zero-ablated
model twice (every position zeroed, as sae_bench does, and special positions kept) and one spliced pass per SAE,
each running only the blocks after the layer from the clean residual there. The special positions of
`models.sequence_start` (each sequence's first position, which is the BOS where there is one, and GPT-2 /
Pythia's `<|endoftext|>`) keep their original activation in the splice (as sae_bench's core eval does with
`exclude_special_tokens_from_reconstruction=True`, the setting of its documented runs), since SAEs are trained
without them, and are never in the pool of a batch selection at inference (`evals/core/inference.py`).

Fields named as sae_bench's (`sae_bench.evals.core.main`, the installed version) are computed as sae_bench
computes them, on sae_bench's batches of `SAE_BENCH_BATCH_PROMPTS` held-out sequences where its formula depends on
the batch:
- `ce_loss_with_ablation`, `kl_div_with_ablation`, `ce_loss_score`, `kl_div_score` and `loss_recovered`: zero-
  ablation of every position, BOS included; the special-positions-kept ablation (this package's convention before)
  is `normalised_reconstruction.ce_loss_with_ablation_bos_kept` / `loss_recovered_bos_kept`.
- `explained_variance_legacy`: mean over tokens of 1 - ||x - x_hat||^2 / ||x - mean_batch(x)||^2.
- `explained_variance`: 1 - E||x - x_hat||^2 / (E||x||^2 - (E over dims of E[x_d^2])^2), sae_bench's formula as
  written (its total variance subtracts the mean of x^2, not of x); the variance-explained reading is `fvu`
  (1 - explained fraction, centred by the held-out mean).
- `mse`: mean over tokens of ||x - x_hat||^2 divided by the tokens of its batch (sae_bench's normalisation; it
  scales with the batch size); the per-element MSE is `normalised_reconstruction.mse_per_element`.
- `cossim`, `l2_norm_in`, `l2_norm_out`, `l2_ratio`: means over tokens (the ratio per token);
  `relative_reconstruction_bias`: per batch E||x_hat||^2 / E<x, x_hat>, averaged over batches.
Remaining deviations from sae_bench's core: activity is z != 0 (sae_bench's feature density counts z > 0), and
our `sparsity.l1` is the mean sum of |z| (sae_bench's `l1` sums signed z); these live in our own
`SignedSparsityMetrics`, not in sae_bench's classes; `token_stats` counts the tokens actually scored (predicted
positions for CE, non-special rows for reconstruction), where sae_bench counts batches x prompts x context.
Held-out activations exclude special positions, as sae_bench's `ignore_tokens` do for its sparsity and variance
metrics.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

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

from abstopk_eval.data.activation_cache import trainable_positions
from abstopk_eval.errors import UserError
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
from abstopk_eval.evals.core.inference import InferencePlan, inference_plan, with_inference_k
from abstopk_eval.evals.options import resolve_config

EVAL_NAME = "core"
SAE_BENCH_BATCH_PROMPTS = 16
"""sae_bench's core `batch_size_prompts` default: the sequences per batch of its batch-dependent formulas."""
RECON_BATCH_ROWS = 4096
"""Held-out rows encoded together (rounded down to whole sae_bench batches): the pool B of `core.inference=batch`."""


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
    ev_legacy: float = 0.0
    """sae_bench-batch sums: per-token 1 - err / ||x - batch mean||^2, per-token err / batch tokens, norm ratio."""
    sb_mse: float = 0.0
    l2_ratio: float = 0.0
    sb_batches: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Per sae_bench batch: (E||x||^2, E over dims of E[x_d^2], E||x - x_hat||^2, relative reconstruction bias)."""
    err_rows: list[torch.Tensor] = field(default_factory=list)
    """Per-row ||x - x_hat||^2 and ||x||^2 and per-block sums of x, for the bootstrap."""
    norm_rows: list[torch.Tensor] = field(default_factory=list)
    x_blocks: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64)


def _recon_batch_rows(batch_size: int, block: int) -> int:
    """Rows encoded together: whole sae_bench batches of `SAE_BENCH_BATCH_PROMPTS` sequences (so whole blocks)."""
    sb_rows = SAE_BENCH_BATCH_PROMPTS * block
    return max(sb_rows, batch_size // sb_rows * sb_rows)


@torch.no_grad()
def reconstruction_stats(
    sae: SAE, activations: torch.Tensor, batch_size: int = RECON_BATCH_ROWS, block: int = 128
) -> _ReconTotals:
    """Reconstruction and sparsity sums of `sae` on activation rows (activity is z != 0)."""
    tot = _ReconTotals(d_sae=sae.cfg.d_sae, block=block)
    sb_rows = SAE_BENCH_BATCH_PROMPTS * block  # one sae_bench batch of held-out sequences
    batch_size = _recon_batch_rows(batch_size, block)
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
        norm_in = x.norm(dim=-1)
        norm_in = torch.where(norm_in.abs() < 1e-4, torch.ones_like(norm_in), norm_in)  # as sae_bench
        tot.l2_ratio += float((x_hat.norm(dim=-1) / norm_in).sum())
        for g in range(0, x.shape[0], sb_rows):
            xs, es, xh = x[g : g + sb_rows], err[g : g + sb_rows], x_hat[g : g + sb_rows]
            tot.ev_legacy += float((1 - es / (xs - xs.mean(0)).pow(2).sum(-1).clamp_min(1e-30)).sum())
            tot.sb_mse += float(es.sum()) / xs.shape[0]
            sumsq = float(xs.pow(2).sum(-1).mean())
            rrb = float(xh.pow(2).sum(-1).mean() / (xs * xh).sum(-1).mean())
            tot.sb_batches.append((sumsq, sumsq / xs.shape[1], float(es.mean()), rrb))
    return tot


def _splice_fn(sae: SAE | None, keep: torch.Tensor):
    """Replacement for the layer output: SAE reconstruction (or zeros when sae is None) except where keep."""

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        if sae is None:
            return torch.where(keep.unsqueeze(-1), hidden, torch.zeros_like(hidden))
        new = hidden.clone()
        rows = ~keep  # only these are encoded (and pooled by a batch selection at inference)
        new[rows] = sae.decode(sae.encode(hidden[rows].float())).to(hidden.dtype)
        return new

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
def loss_stats(
    ctx: EvalContext, saes: dict[str, SAE]
) -> tuple[_LossTotals, _LossTotals, _LossTotals, dict[str, _LossTotals]]:
    """CE / KL of the clean model, the zero-ablated model (every position, as sae_bench; and special positions
    kept) and every spliced SAE, on ctx.eval_tokens.

    The clean pass of each batch is SAE-independent and cached (`core.passes.clean_pass`); the zero-ablations and
    every SAE run only the blocks after the layer, from the clean residual there (`core.passes.spliced_losses`)."""
    adapter, tokens = ctx.adapter, ctx.eval_tokens
    clean, zero, zero_kept = _LossTotals(), _LossTotals(), _LossTotals()
    spliced = {name: _LossTotals() for name in saes}
    special = adapter.sequence_start  # the one sequence-start rule (models.sequence_start)
    for start in tqdm(range(0, tokens.shape[0], ctx.batch_size), desc="core: CE/KL passes", unit="batch"):
        batch = tokens[start : start + ctx.batch_size].to(ctx.device)
        keep = special.special_mask(batch)
        base = passes.clean_pass(adapter, batch, ctx.layer)
        clean.add(base.ce)
        fallback = passes.CleanDistribution()
        runs = [(zero, None, torch.zeros_like(keep)), (zero_kept, None, keep)]
        for tot, sae, kept in [*runs, *((spliced[name], sae, keep) for name, sae in saes.items())]:
            resid = _splice_fn(sae, kept)(base.resid)
            tot.add(*passes.spliced_losses(adapter, batch, ctx.layer, base, resid, fallback))
    return clean, zero, zero_kept, spliced


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
    zero_kept: _LossTotals,
    spl: _LossTotals,
    config: CoreEvalConfig,
    unstructured: dict[str, Any],
) -> CoreEvalOutput:
    n = max(recon.n, 1)
    mean = recon.sum_x / n
    total_var = recon.sq_norm - n * float(mean.pow(2).sum())
    fvu = recon.sq_err / total_var
    ce_clean, ce_zero, ce_sae = clean.ce / clean.n, zero.ce / zero.n, spl.ce / spl.n
    ce_zero_kept = zero_kept.ce / zero_kept.n
    kl_zero, kl_sae = zero.kl / zero.n, spl.kl / spl.n
    density = recon.fires / n
    dead = float((recon.fires == 0).float().mean())
    info = ctx.training_info.get(sae_id, {})
    sumsq, actsq, resid, rrb = (sum(b[i] for b in recon.sb_batches) / len(recon.sb_batches) for i in range(4))
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
        reconstruction_quality=ReconstructionQualityMetrics(  # sae_bench's formulas (module docstring)
            explained_variance=1 - resid / (sumsq - actsq**2),
            explained_variance_legacy=recon.ev_legacy / n,
            mse=recon.sb_mse / n,
            cossim=recon.cos / n,
        ),
        normalised_reconstruction=NormalisedReconstructionMetrics(
            nmse=recon.sq_err / recon.sq_norm,
            fvu=fvu,
            loss_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean),
            nmse_per_token_mean=float((torch.cat(recon.err_rows) / torch.cat(recon.norm_rows).clamp_min(1e-30)).mean()),
            mse_per_element=recon.sq_err / (n * sae.cfg.d_in),
            ce_loss_with_ablation_bos_kept=ce_zero_kept,
            loss_recovered_bos_kept=(ce_zero_kept - ce_sae) / (ce_zero_kept - ce_clean),
        ),
        shrinkage=ShrinkageMetrics(
            l2_norm_in=recon.norm_in / n,
            l2_norm_out=recon.norm_out / n,
            l2_ratio=recon.l2_ratio / n,
            relative_reconstruction_bias=rrb,
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
            **unstructured,
        },
        **output_common(ctx, sae_id, sae),
    )


@torch.no_grad()
def pile_context(ctx: EvalContext, batch_size: int = 8) -> EvalContext:
    """`ctx` with the Pile's held-out split as core's held-out text: as many sequences of the same length as the
    run's held-out activations span (CE on as many as `ctx.eval_tokens` has), activations BOS-excluded as the
    activation cache does."""
    from abstopk_eval.data.canonical import PILE, pile_documents
    from abstopk_eval.data.corpus import pack_documents, split_documents

    seq_len = int(ctx.eval_tokens.shape[1])
    n_rows = int(ctx.heldout_activations().shape[0])
    n_seqs = max(int(ctx.eval_tokens.shape[0]), math.ceil(n_rows / max(seq_len - 1, 1)))
    tokens = pack_documents(split_documents(pile_documents(), "eval"), ctx.adapter.tokenizer, seq_len, n_seqs * seq_len)
    if tokens.shape[0] == 0:
        raise UserError(f"core dataset_source='pile': {PILE[0]} gave no held-out sequence of {seq_len} tokens")
    rows = []
    for i in range(0, int(tokens.shape[0]), batch_size):
        ids = tokens[i : i + batch_size]
        keep = trainable_positions(ids, ctx.adapter.sequence_start)  # as the activation cache keeps them
        rows.append(ctx.adapter.activations(ids, ctx.layer)[keep.to(ctx.adapter.device)].float().cpu())
    acts = torch.cat(rows)
    return dataclasses.replace(
        ctx,
        eval_tokens=tokens[: ctx.eval_tokens.shape[0]],
        heldout_activations=lambda: acts,
        dataset=f"pile held-out split (Hugging Face hub dataset {PILE[0]}, {int(tokens.shape[0])} sequences)",
    )


def _sweep_entry(
    plan: InferencePlan, recon: _ReconTotals, clean: _LossTotals, zero: _LossTotals, spl: _LossTotals
) -> dict[str, Any]:
    """One inference-k point: the metrics of Figures 3 and 4 for the same weights at another k."""
    ce_clean, ce_zero, ce_sae = clean.ce / clean.n, zero.ce / zero.n, spl.ce / spl.n
    n = max(recon.n, 1)
    total_var = recon.sq_norm - n * float((recon.sum_x / n).pow(2).sum())
    return {
        "inference_k": plan.k,
        "rule": plan.rule,
        "l0": recon.l0 / n,
        "nmse": recon.sq_err / recon.sq_norm,
        "nmse_per_token_mean": float((torch.cat(recon.err_rows) / torch.cat(recon.norm_rows).clamp_min(1e-30)).mean()),
        "fvu": recon.sq_err / total_var,
        "loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean),
        "ce_loss_with_sae": ce_sae,
        "kl_div_with_sae": spl.kl / spl.n,
    }


def run_core(ctx: EvalContext, saes: dict[str, SAE], config: CoreEvalConfig | None = None) -> dict[str, CoreEvalOutput]:
    if resolve_config(CoreEvalConfig, ctx, EVAL_NAME, config).dataset_source == "pile":
        ctx = pile_context(ctx)
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
    plans = {name: inference_plan(ctx, name, sae, config.inference) for name, sae in saes.items()}
    swept = {  # (sae, inference k) -> plan, scored in the same passes as the SAEs themselves
        (name, k): p for name in saes for k in config.inference_k if (p := with_inference_k(plans[name], k))
    }
    encoders = {**{(name, None): p.sae for name, p in plans.items()}, **{key: p.sae for key, p in swept.items()}}
    recon = {
        key: reconstruction_stats(enc, acts, block=block)
        for key, enc in tqdm(encoders.items(), desc="core: reconstruction", unit="sae")
    }
    clean, zero, zero_kept, spliced = loss_stats(ctx, encoders)
    batch_rows = _recon_batch_rows(RECON_BATCH_ROWS, block)
    outputs = {}
    for name, sae in saes.items():
        unstructured: dict[str, Any] = {"inference": plans[name].record(config.inference, batch_rows)}
        if config.inference_k:
            points = [(k, swept.get((name, k))) for k in config.inference_k]
            unstructured["inference_k_sweep"] = [
                _sweep_entry(p, recon[name, k], clean, zero, spliced[name, k]) for k, p in points if p is not None
            ]
            if any(p is None for _, p in points):
                unstructured["inference_k_sweep_note"] = (
                    f"{plans[name].rule}: its inference takes no k"
                    if plans[name].k is None
                    else f"k outside 1..d_sae ({sae.cfg.d_sae}) skipped"
                )
        key = (name, None)
        outputs[name] = _output(ctx, name, sae, recon[key], clean, zero, zero_kept, spliced[key], config, unstructured)
    return outputs


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
