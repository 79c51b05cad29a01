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


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer for the [B, d_sae] temporaries of every step.

    Freshly allocated tensors of this size are page-faulted in on each use (glibc serves them with mmap),
    which costs as much as a third of the encoder matmul on CPU; reusing one buffer per shape avoids it.
    """
    key = (name, shape, like.dtype, like.device)
    buf = _SCRATCH.get(key)
    if buf is None:
        if len(_SCRATCH) > 8:
            _SCRATCH.clear()
        buf = _SCRATCH[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def _bag(indices: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sums of `weight` rows: out[b] = sum_{i in bag b} values[i] * weight[indices[i]]."""
    return F.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=values)


class GatherPreActivations(torch.autograd.Function):
    """values[i] = ((x - b_dec) @ W_enc + b_enc)[rows[i], cols[i]], given precomputed; sparse backward.

    With g the incoming gradient: dW_enc[:, s] = sum_{i: cols[i]=s} g_i (x - b_dec)[rows[i]] (one
    embedding_bag over the active pairs sorted by latent), db_enc[s] = sum of g_i over the same pairs,
    db_dec = -W_enc @ db_enc, and dx[b] = sum_{i: rows[i]=b} g_i W_enc[:, cols[i]] (only when x needs it).
    Each is O(nnz * d) instead of the dense O(B * d_sae * d).
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, rows, cols, offsets, pre_values):  # type: ignore[override]
        ctx.save_for_backward(x, b_dec, W_enc, rows, cols, offsets)
        return pre_values

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, b_dec, W_enc, rows, cols, offsets = ctx.saved_tensors
        grad_x = grad_b_dec = grad_W = grad_b = None
        d_sae = W_enc.shape[1]
        if ctx.needs_input_grad[2]:
            order = torch.argsort(cols, stable=True)
            counts = torch.bincount(cols[order], minlength=d_sae)
            col_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
            grad_W = _bag(rows[order], x - b_dec, col_offsets, grad[order]).t()
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            summed = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
            grad_b = summed if ctx.needs_input_grad[3] else None
            grad_b_dec = -(W_enc @ summed) if ctx.needs_input_grad[1] else None
        if ctx.needs_input_grad[0]:
            grad_x = _bag(cols, W_enc.t().contiguous(), offsets, grad)
        return grad_x, grad_b_dec, grad_W, grad_b, None, None, None, None


def _select(hidden_pre: torch.Tensor, variant: str, k: float) -> tuple[Active, torch.Tensor]:
    """Active pairs and their hidden_pre values for the variant's selection rule (relu where unsigned)."""
    B, S = hidden_pre.shape
    signed = variant in ("abstopk", "batch-abstopk")
    score = torch.abs(hidden_pre, out=_scratch("abs", hidden_pre.shape, hidden_pre)) if signed else hidden_pre
    if variant in ("topk", "abstopk"):
        idx = torch.topk(score, int(k), dim=-1, sorted=False).indices
        rows = torch.arange(B, device=hidden_pre.device).repeat_interleave(int(k))
        cols = idx.flatten()
        values = hidden_pre.gather(1, idx).flatten()
    else:
        if not signed:
            score = torch.clamp(hidden_pre, min=0, out=_scratch("relu", hidden_pre.shape, hidden_pre))
        flat = _batch_topk_positions(score, int(k * B), per_row=min(S, 4 * int(k) + 1))
        rows, cols = flat // S, flat % S
        values = hidden_pre.flatten()[flat]
    if not signed:
        keep = values > 0  # the ReLU of the unsigned variants; zeros are not active
        rows, cols, values = rows[keep], cols[keep], values[keep]
    return Active(rows, cols, B), values


def _batch_topk_positions(score: torch.Tensor, n_keep: int, per_row: int) -> torch.Tensor:
    """Sorted flat positions of the n_keep largest entries of `score` [B, S] (what topk over score.flatten() gives).

    Two stages: each row's `per_row` largest candidates, then the n_keep largest candidates. Exact unless
    some row could hold more than `per_row` winners (its smallest candidate reaches the cut-off), in which
    case it falls back to one topk over the flattened batch.
    """
    B, S = score.shape
    if per_row * B <= n_keep or per_row >= S:
        return torch.topk(score.flatten(), n_keep, sorted=False).indices.sort().values
    cand_vals, cand_idx = torch.topk(score, per_row, dim=-1, sorted=False)
    top = torch.topk(cand_vals.flatten(), n_keep, sorted=False)
    cutoff = top.values.min()
    if bool((cand_vals.min(dim=-1).values >= cutoff).any()):
        return torch.topk(score.flatten(), n_keep, sorted=False).indices.sort().values
    rows = top.indices // per_row
    cols = cand_idx.flatten()[top.indices]
    return (rows * S + cols).sort().values


def _aux_active(hidden_pre: torch.Tensor, dead: torch.Tensor, k_aux: int, signed: bool) -> Active:
    """Each row's k_aux largest dead latents (by |.| when signed), ranking only the dead columns.

    Same pairs as sae_lens's topk over `where(dead, pre, -inf)`, without a [B, d_sae] masked copy and a
    full-width topk (that copy cost as much as the selection of the main latents).
    """
    B = hidden_pre.shape[0]
    dead_cols = dead.nonzero().squeeze(1)
    score = hidden_pre.index_select(1, dead_cols)
    if signed:
        score = score.abs_()
    idx = score.topk(k_aux, dim=-1, sorted=False).indices
    return Active(torch.arange(B, device=hidden_pre.device).repeat_interleave(k_aux), dead_cols[idx.flatten()], B)


def _exact_pre(x_centred: torch.Tensor, W: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
               chunk: int = 16384) -> torch.Tensor:
    """fp32 (x_centred @ W + b)[rows, cols] at the given pairs only, in chunks of O(chunk * d) memory."""
    out = torch.empty(rows.numel(), dtype=x_centred.dtype, device=x_centred.device)
    for start in range(0, rows.numel(), chunk):
        r, c = rows[start:start + chunk], cols[start:start + chunk]
        out[start:start + chunk] = torch.linalg.vecdot(x_centred[r], W.t()[c]) + b[c]
    return out


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


def sparse_training_forward(sae: TrainingSAE, x: torch.Tensor, variant: str, dead: torch.Tensor | None,
                            encoder_dtype: torch.dtype | None = None) -> SparseStepOutput:
    """Loss of one training step of a sae_lens k-sparse training SAE, computed sparsely.

    Same quantities as `sae.training_forward_pass` (MSE summed over d, mean over the batch, plus the aux-k
    loss), assuming apply_b_dec_to_input and rescale_acts_by_decoder_norm, as our variants are built.

    encoder_dtype=torch.bfloat16 runs the one dense product (the encoder matmul that ranks latents) in
    bf16; the selected latents' values are then recomputed in fp32, so only near-ties in the selection can
    differ from the fp32 path (accuracy measured in benchmarks/train_throughput.py --bf16).
    """
    cfg = sae.cfg
    k = cfg.k
    norms = sae.W_dec.norm(dim=-1)
    with torch.no_grad():
        # hidden_pre = pre * ||W_dec||, with the scaling folded into the (small) weights, not the [B, d_sae] output
        x_centred, W_scaled, b_scaled = x - sae.b_dec, sae.W_enc * norms, sae.b_enc * norms
        if encoder_dtype is None or encoder_dtype == x.dtype:
            hidden_pre = torch.addmm(b_scaled, x_centred, W_scaled,
                                     out=_scratch("hidden_pre", (x.shape[0], sae.cfg.d_sae), x))
        else:
            hidden_pre = torch.addmm(b_scaled.to(encoder_dtype), x_centred.to(encoder_dtype), W_scaled.to(encoder_dtype))
    active, hidden_values = _select(hidden_pre, variant, k)
    if hidden_pre.dtype != x.dtype:
        hidden_values = _exact_pre(x_centred, W_scaled, b_scaled, active.rows, active.cols)
        if variant not in ("abstopk", "batch-abstopk"):
            hidden_values = hidden_values.clamp_(min=0)  # the ReLU, in case rounding picked a value at ~0
    offsets = active.offsets()
    raw = GatherPreActivations.apply(x, sae.b_dec, sae.W_enc, sae.b_enc, active.rows, active.cols, offsets,
                                     hidden_values / norms[active.cols])
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
        aux_pre = (hidden_pre[aux.rows, aux.cols] if hidden_pre.dtype == x.dtype
                   else _exact_pre(x_centred, W_scaled, b_scaled, aux.rows, aux.cols))
        aux_raw = GatherPreActivations.apply(x, sae.b_dec, sae.W_enc, sae.b_enc, aux.rows, aux.cols, aux_offsets,
                                             aux_pre / norms[aux.cols])
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
