"""Sparse training path for the k-sparse variants (per-sample or batch top-k selection, signed or not).

sae_lens computes the decoder as a dense [B, d_sae] @ [d_sae, d] product and back-propagates densely
through the encoder, although only k of d_sae latents per token are active. Here the only dense work is
the encoder forward matmul (the roofline); every other product touches active latents only:

- decoder: `SparseDecode`, an embedding_bag over the active latents' decoder rows weighted by their values,
  whose backward is another embedding_bag over the pairs sorted by latent;
- encoder backward: `GatherPreActivations` returns precomputed pre-activations at the active (row, latent)
  pairs and back-propagates to W_enc / b_enc with embedding_bag over the same pairs (the by-latent order is
  sorted once per step and shared).

The math is sae_lens's (rescale_acts_by_decoder_norm, aux-k loss on dead latents, batch thresholds), so
`sparse_training_forward` matches `TrainingSAE.training_forward_pass` in loss and gradients (tested). The
selection rule and signedness come from the variant's declaration (`VariantSpec`), which registration checks
against the sae_lens class it builds.
Written by hand because sae_lens has no sparse backward; this is the training bottleneck on CPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainingSAE

from abstopk_eval.saes.variants import SelectionRule, VariantSpec
from abstopk_eval.training import distributed


@dataclass
class Active:
    """Active (row, latent) pairs of a batch, sorted by row: a COO [B, d_sae] sparse matrix."""

    rows: torch.Tensor
    cols: torch.Tensor
    n_rows: int
    n_cols: int

    @functools.cached_property
    def offsets(self) -> torch.Tensor:
        """Start of each row's pairs (embedding_bag offsets)."""
        return _starts(self.rows, self.n_rows)

    @functools.cached_property
    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order, starts): the pairs sorted by latent (stable) and each latent's first position in that order.

        Every weight gradient ([d_sae, d] sums over a latent's pairs) is one embedding_bag in this order; it
        is computed once per step and shared by the encoder and decoder backward.
        """
        order = torch.argsort(self.cols, stable=True)
        return order, _starts(self.cols[order], self.n_cols)


def _starts(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    counts = torch.bincount(sorted_ids, minlength=n)
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
    def forward(ctx, x, b_dec, W_enc, b_enc, active: Active, pre_values):  # type: ignore[override]
        ctx.save_for_backward(x, b_dec, W_enc)
        ctx.active = active
        return pre_values

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, b_dec, W_enc = ctx.saved_tensors
        active: Active = ctx.active
        grad_x = grad_b_dec = grad_W = grad_b = None
        if ctx.needs_input_grad[2]:
            order, starts = active.by_latent
            grad_W = _bag(active.rows[order], x - b_dec, starts, grad[order]).t()
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            summed = torch.zeros(active.n_cols, dtype=grad.dtype, device=grad.device).index_add_(0, active.cols, grad)
            grad_b = summed if ctx.needs_input_grad[3] else None
            grad_b_dec = -(W_enc @ summed) if ctx.needs_input_grad[1] else None
        if ctx.needs_input_grad[0]:
            grad_x = _bag(active.cols, W_enc.t().contiguous(), active.offsets, grad)
        return grad_x, grad_b_dec, grad_W, grad_b, None, None


class SparseDecode(torch.autograd.Function):
    """out[b] = sum_{i: rows[i]=b} values[i] * W_dec[cols[i]] (embedding_bag), with a sparse backward.

    dW_dec[s] = sum_{i: cols[i]=s} values[i] * g[rows[i]] is one embedding_bag in the latent order shared
    with `GatherPreActivations` (embedding_bag's own weight backward sorts the indices again);
    dvalues[i] = <g[rows[i]], W_dec[cols[i]]> comes from embedding_bag's own per-sample-weights backward.
    """

    @staticmethod
    def forward(ctx, values, W_dec, active: Active):  # type: ignore[override]
        ctx.save_for_backward(values, W_dec)
        ctx.active = active
        return _bag(active.cols, W_dec, active.offsets, values)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        active: Active = ctx.active
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            # embedding_bag's per-sample-weights backward computes these dot products without gathering
            # [nnz, d] copies (a chunked gather here was 5x slower); W_dec's gradient is not asked of it
            with torch.enable_grad():
                weights = values.detach().requires_grad_()
                out = _bag(active.cols, W_dec.detach(), active.offsets, weights)
                (grad_values,) = torch.autograd.grad(out, weights, grad)
        if ctx.needs_input_grad[1]:
            order, starts = active.by_latent
            grad_W = _bag(active.rows[order], grad, starts, values[order])
        return grad_values, grad_W, None


def _pair_dots(
    left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chunk: int = 16384
) -> torch.Tensor:
    """<left[rows[i]], right[cols[i]]> for every pair, in chunks of O(chunk * d) memory."""
    out = torch.empty(rows.numel(), dtype=left.dtype, device=left.device)
    for start in range(0, rows.numel(), chunk):
        out[start : start + chunk] = torch.linalg.vecdot(
            left[rows[start : start + chunk]], right[cols[start : start + chunk]]
        )
    return out


def _select(hidden_pre: torch.Tensor, selection: SelectionRule, signed: bool, k: float) -> tuple[Active, torch.Tensor]:
    """Active pairs and their hidden_pre values for a k-sparse selection rule (by |u| when signed, else relu)."""
    B, S = hidden_pre.shape
    score = torch.abs(hidden_pre, out=_scratch("abs", hidden_pre.shape, hidden_pre)) if signed else hidden_pre
    if selection is SelectionRule.PER_SAMPLE_TOPK:
        idx = torch.topk(score, int(k), dim=-1, sorted=False).indices
        rows = torch.arange(B, device=hidden_pre.device).repeat_interleave(int(k))
        cols = idx.flatten()
        values = hidden_pre.gather(1, idx).flatten()
    elif selection is SelectionRule.BATCH_TOPK:
        if not signed:
            score = torch.clamp(hidden_pre, min=0, out=_scratch("relu_score", hidden_pre.shape, hidden_pre))
        flat = _global_batch_topk_positions(score, k, B * distributed.world_size())
        rows, cols = flat // S, flat % S
        values = hidden_pre.flatten()[flat]
    else:
        raise ValueError(f"the sparse k-SAE kernels do not implement {selection.value} selection")
    if not signed:
        keep = values > 0  # the ReLU of the unsigned variants; zeros are not active
        rows, cols, values = rows[keep], cols[keep], values[keep]
    return Active(rows, cols, B, S), values


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


def _global_batch_topk_positions(score: torch.Tensor, k: float, global_rows: int) -> torch.Tensor:
    """Sorted flat positions, in this rank's `score` [B, S], of the top k * global_rows entries of the global
    batch (under torchrun every rank holds B of its rows; in one process this is the batch's top B*k). A global
    winner is among its own rank's top n, so each rank takes its top n and keeps those at or above the global
    cut-off (`distributed.global_cutoff`): exactly the global selection, up to ties at the cut-off."""
    world = distributed.world_size()
    n_keep = int(k * global_rows)
    per_row = min(score.shape[1], 4 * int(k) * world + 1)
    flat = _batch_topk_positions(score, min(n_keep, score.numel()), per_row=per_row)
    if world == 1:
        return flat
    values = score.flatten()[flat]
    return flat[values >= distributed.global_cutoff(values, n_keep)]


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
    return Active(
        torch.arange(B, device=hidden_pre.device).repeat_interleave(k_aux),
        dead_cols[idx.flatten()],
        B,
        hidden_pre.shape[1],
    )


def _exact_pre(x_centred: torch.Tensor, W: torch.Tensor, b: torch.Tensor, active: Active) -> torch.Tensor:
    """fp32 (x_centred @ W + b) at the active pairs only."""
    return _pair_dots(x_centred, W.t(), active.rows, active.cols) + b[active.cols]


@dataclass
class SparseStepOutput:
    loss: torch.Tensor
    mse_loss: torch.Tensor
    sae_out: torch.Tensor
    active: Active
    values: torch.Tensor
    """Signed latent values at `active` (after decoder-norm rescaling, as sae_lens's feature_acts)."""

    def fired(self, d_sae: int) -> torch.Tensor:
        return torch.zeros(d_sae, dtype=torch.bool, device=self.values.device).index_fill_(
            0, self.active.cols[self.values != 0], True
        )

    def l0(self) -> float:
        return float((self.values != 0).sum()) / self.active.n_rows


def sparse_training_forward(
    sae: TrainingSAE,
    x: torch.Tensor,
    variant: VariantSpec,
    dead: torch.Tensor | None,
    encoder_dtype: torch.dtype | None = None,
) -> SparseStepOutput:
    """Loss of one training step of a sae_lens k-sparse training SAE, computed sparsely.

    `variant` declares the selection rule (per-sample or batch top-k) and whether latents are signed.

    Same quantities as `sae.training_forward_pass` (MSE summed over d, mean over the batch, plus the aux-k
    loss), assuming apply_b_dec_to_input and rescale_acts_by_decoder_norm (`register_variant` checks both for
    variants on this path).

    encoder_dtype=torch.bfloat16 runs the one dense product (the encoder matmul that ranks latents) in
    bf16; the selected latents' values are then recomputed in fp32, so only near-ties in the selection can
    differ from the fp32 path (accuracy measured in benchmarks/train_throughput.py --bf16).
    """
    cfg = sae.cfg
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1)
        # hidden_pre = pre * ||W_dec||, with the scaling folded into the (small) weights, not the [B, d_sae] output
        x_centred, W_scaled, b_scaled = x - sae.b_dec, sae.W_enc * norms, sae.b_enc * norms
        if encoder_dtype is None or encoder_dtype == x.dtype:
            hidden_pre = torch.addmm(
                b_scaled, x_centred, W_scaled, out=_scratch("hidden_pre", (x.shape[0], cfg.d_sae), x)
            )
        else:
            hidden_pre = torch.addmm(
                b_scaled.to(encoder_dtype), x_centred.to(encoder_dtype), W_scaled.to(encoder_dtype)
            )
    signed = variant.signed
    active, hidden_values = _select(hidden_pre, variant.selection, signed, cfg.k)
    if hidden_pre.dtype != x.dtype:
        hidden_values = _exact_pre(x_centred, W_scaled, b_scaled, active)
        if not signed:
            hidden_values = hidden_values.clamp_(min=0)  # the ReLU, in case rounding picked a value at ~0
    # sae_lens ranks pre * ||W_dec|| and divides the selected values by ||W_dec|| again before decoding; the
    # two cancel in the output and in every gradient, so the raw pre-activations are decoded with W_dec as is
    raw = GatherPreActivations.apply(x, sae.b_dec, sae.W_enc, sae.b_enc, active, hidden_values / norms[active.cols])
    sae_out = SparseDecode.apply(raw, sae.W_dec, active) + sae.b_dec
    values = raw.detach() * norms[active.cols]  # sae_lens's feature_acts (batch thresholds, L0, logging)
    mse_loss = (sae_out - x).pow(2).sum(-1).mean()
    loss = mse_loss
    if dead is not None and (num_dead := int(dead.sum())) > 0:
        residual = (x - sae_out).detach()
        k_aux = min(x.shape[-1] // 2, num_dead)
        scale = min(num_dead / (x.shape[-1] // 2), 1.0)
        aux = _aux_active(hidden_pre, dead, k_aux, signed)
        aux_pre = (
            hidden_pre[aux.rows, aux.cols]
            if hidden_pre.dtype == x.dtype
            else _exact_pre(x_centred, W_scaled, b_scaled, aux)
        )
        aux_raw = GatherPreActivations.apply(x, sae.b_dec, sae.W_enc, sae.b_enc, aux, aux_pre / norms[aux.cols])
        recons = SparseDecode.apply(aux_raw, sae.W_dec, aux)
        loss = loss + cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(-1).mean()
    return SparseStepOutput(loss=loss, mse_loss=mse_loss, sae_out=sae_out, active=active, values=values)


@torch.no_grad()
def update_batch_threshold(sae: TrainingSAE, values: torch.Tensor) -> None:
    """sae_lens's BatchTopK threshold EMA from the active values (smallest |value| among nonzero ones).

    Equals `update_topk_threshold(feature_acts)` of sae_lens's BatchTopK (values there are >= 0) and of
    our BatchAbsTopK, without building the dense [B, d_sae] activations.
    """
    nonzero = values[values != 0]
    if nonzero.numel():
        lr = sae.cfg.topk_threshold_lr
        smallest = nonzero.abs().min().to(sae.topk_threshold.dtype)
        sae.topk_threshold = (1 - lr) * sae.topk_threshold + lr * smallest
