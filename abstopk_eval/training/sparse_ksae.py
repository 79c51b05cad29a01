"""Sparse training path for the k-sparse variants (topk, batchtopk, abstopk, batch-abstopk).

sae_lens computes the decoder as a dense [B, d_sae] @ [d_sae, d] product and back-propagates densely
through the encoder, although only k of d_sae latents per token are active. Here the only dense work is
the encoder forward matmul (the roofline); every other product touches active latents only:

- decoder forward: embedding_bag over the active latents' decoder rows, weighted by their values;
- encoder backward: `GatherPreActivations` returns precomputed pre-activations at the active (row, latent)
  pairs and back-propagates to W_enc / b_enc with embedding_bag over the same pairs.

The math is sae_lens's (rescale_acts_by_decoder_norm, aux-k loss on dead latents, batch thresholds), so
`sparse_training_forward` matches `TrainingSAE.training_forward_pass` in loss and gradients (tested).
Written by hand because sae_lens has no sparse backward; this is the training bottleneck on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainingSAE


@dataclass
class Active:
    """Active (row, latent) pairs of a batch, sorted by row: a COO [B, d_sae] sparse matrix."""

    rows: torch.Tensor
    cols: torch.Tensor
    n_rows: int

    def offsets(self) -> torch.Tensor:
        counts = torch.bincount(self.rows, minlength=self.n_rows)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])


def _bag(indices: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sums of `weight` rows: out[b] = sum_{i in bag b} values[i] * weight[indices[i]]."""
    return F.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=values)


class GatherPreActivations(torch.autograd.Function):
    """values[i] = (x_c @ W_enc + b_enc)[rows[i], cols[i]], given precomputed; sparse backward.

    Gradients: dW_enc[:, s] = sum_{i: cols[i]=s} g_i x_c[rows[i]], db_enc[s] = sum g_i over the same,
    dx_c[b] = sum_{i: rows[i]=b} g_i W_enc[:, cols[i]]. Each is one embedding_bag / index_add over the
    active pairs: O(nnz * d) instead of O(B * d_sae * d).
    """

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, rows, cols, offsets, pre_values):  # type: ignore[override]
        ctx.save_for_backward(x_c, W_enc, rows, cols, offsets)
        return pre_values

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_c, W_enc, rows, cols, offsets = ctx.saved_tensors
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            order = torch.argsort(cols, stable=True)
            by_col = cols[order]
            counts = torch.bincount(by_col, minlength=W_enc.shape[1])
            col_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
            if ctx.needs_input_grad[1]:
                grad_W = _bag(rows[order], x_c, col_offsets, grad[order]).t()
            if ctx.needs_input_grad[2]:
                grad_b = torch.zeros(W_enc.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        if ctx.needs_input_grad[0]:
            grad_x = _bag(cols, W_enc.t(), offsets, grad)
        return grad_x, grad_W, grad_b, None, None, None, None


def _select(hidden_pre: torch.Tensor, variant: str, k: float) -> tuple[Active, torch.Tensor]:
    """Active pairs and their hidden_pre values for the variant's selection rule (relu where unsigned)."""
    B, S = hidden_pre.shape
    signed = variant in ("abstopk", "batch-abstopk")
    score = hidden_pre.abs() if signed else hidden_pre
    if variant in ("topk", "abstopk"):
        idx = torch.topk(score, int(k), dim=-1, sorted=False).indices
        rows = torch.arange(B, device=hidden_pre.device).repeat_interleave(int(k))
        cols = idx.flatten()
    else:
        flat_score = score.flatten() if signed else score.relu().flatten()
        flat = torch.topk(flat_score, int(k * B), sorted=False).indices.sort().values
        rows, cols = flat // S, flat % S
    values = hidden_pre[rows, cols]
    if not signed:
        keep = values > 0  # the ReLU of the unsigned variants; zeros are not active
        rows, cols = rows[keep], cols[keep]
    return Active(rows, cols, B), hidden_pre[rows, cols]


def _aux_active(hidden_pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool) -> Active:
    B = hidden_pre.shape[0]
    score = hidden_pre.abs() if signed else hidden_pre
    masked = torch.where(dead[None], score, torch.full_like(score, -torch.inf))
    idx = masked.topk(k_aux, dim=-1, sorted=False).indices
    return Active(torch.arange(B, device=hidden_pre.device).repeat_interleave(k_aux), idx.flatten(), B)


@dataclass
class SparseStepOutput:
    loss: torch.Tensor
    mse_loss: torch.Tensor
    sae_out: torch.Tensor
    active: Active
    values: torch.Tensor
    """Signed latent values at `active` (after decoder-norm rescaling, as sae_lens's feature_acts)."""

    def fired(self, d_sae: int) -> torch.Tensor:
        return torch.zeros(d_sae, dtype=torch.bool, device=self.values.device).index_fill_(0, self.active.cols[self.values != 0], True)

    def l0(self) -> float:
        return float((self.values != 0).sum()) / self.active.n_rows


def sparse_training_forward(sae: TrainingSAE, x: torch.Tensor, variant: str, dead: torch.Tensor | None) -> SparseStepOutput:
    """Loss of one training step of a sae_lens k-sparse training SAE, computed sparsely.

    Same quantities as `sae.training_forward_pass` (MSE summed over d, mean over the batch, plus the aux-k
    loss), assuming apply_b_dec_to_input and rescale_acts_by_decoder_norm, as our variants are built.
    """
    cfg = sae.cfg
    k = cfg.k
    x_c = x - sae.b_dec
    norms = sae.W_dec.norm(dim=-1)
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x_c, sae.W_enc)
        hidden_pre = pre * norms
    active, _ = _select(hidden_pre, variant, k)
    offsets = active.offsets()
    raw = GatherPreActivations.apply(x_c, sae.W_enc, sae.b_enc, active.rows, active.cols, offsets, pre[active.rows, active.cols])
    # feature_acts = hidden_pre = pre * ||W_dec||; decoding divides by the norm again (sae_lens act_times_W_dec)
    values = raw * norms[active.cols]
    W_dec_unit = sae.W_dec / norms[:, None]
    sae_out = _bag(active.cols, W_dec_unit, offsets, values) + sae.b_dec
    mse_loss = (sae_out - x).pow(2).sum(-1).mean()
    loss = mse_loss
    signed = variant in ("abstopk", "batch-abstopk")
    if dead is not None and (num_dead := int(dead.sum())) > 0:
        residual = (x - sae_out).detach()
        k_aux = min(x.shape[-1] // 2, num_dead)
        scale = min(num_dead / (x.shape[-1] // 2), 1.0)
        aux = _aux_active(hidden_pre, dead, k_aux, signed)
        aux_offsets = aux.offsets()
        aux_raw = GatherPreActivations.apply(x_c, sae.W_enc, sae.b_enc, aux.rows, aux.cols, aux_offsets, pre[aux.rows, aux.cols])
        recons = _bag(aux.cols, W_dec_unit, aux_offsets, aux_raw * norms[aux.cols])
        loss = loss + cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(-1).mean()
    return SparseStepOutput(loss=loss, mse_loss=mse_loss, sae_out=sae_out, active=active, values=values)


@torch.no_grad()
def update_batch_threshold(sae: TrainingSAE, values: torch.Tensor) -> None:
    """sae_lens's BatchTopK threshold EMA from the active values (smallest |value| among nonzero ones).

    Equals `update_topk_threshold(feature_acts)` of sae_lens's batchtopk (values there are >= 0) and of
    our batch-abstopk, without building the dense [B, d_sae] activations.
    """
    nonzero = values[values != 0]
    if nonzero.numel():
        lr = sae.cfg.topk_threshold_lr
        smallest = nonzero.abs().min().to(sae.topk_threshold.dtype)
        sae.topk_threshold = (1 - lr) * sae.topk_threshold + lr * smallest
