"""Sparse training path for the threshold variants (ReLU + L1, JumpReLU + L0), once they are sparse.

A ReLU latent's gradient is zero wherever its pre-activation is <= 0, and a JumpReLU latent's (with its
straight-through estimator) wherever the pre-activation is below the threshold and outside the
estimator's window |pre - threshold| < bandwidth / 2. So, as for the k-sparse variants, only the encoder
forward needs the dense [B, d_sae] product: the decoder and the whole backward run over the "support"
pairs (active or inside the window) via `GatherPreActivations` and `SparseDecode`.

Unlike k-sparse SAEs these are dense early in training (about half the ReLU latents fire at
initialisation), so `sparse_threshold_forward` returns None while the support is denser than
`MAX_SUPPORT_DENSITY` and the trainer then takes sae_lens's dense step; both compute the same loss and
gradients (tested against `training_forward_pass`). Written by hand because sae_lens has no sparse backward.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE
from sae_lens.saes.sae import TrainingSAE
from sae_lens.saes.standard_sae import StandardTrainingSAE

from abstopk_eval.training.sparse_ksae import Active, GatherPreActivations, SparseDecode, SparseStepOutput, _scratch

MAX_SUPPORT_DENSITY = 0.05
"""Above this fraction of (token, latent) pairs the gathers cost more than the dense products (measured on CPU)."""


def _rectangle(h: torch.Tensor, t: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """sae_lens's rectangle((h - t) / bandwidth), evaluated with the same float expression."""
    r = (h - t) / bandwidth
    return (r > -0.5) & (r < 0.5)


class _PairJumpReLU(torch.autograd.Function):
    """sae_lens's JumpReLU (and its straight-through gradients) on gathered pairs: h * (h > t), elementwise.

    sae_lens's version sums the threshold gradient over the batch dimension; here `t` is already gathered
    per pair, so the gradient stays per pair and the gather's backward sums it into the threshold.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, t: torch.Tensor, bandwidth: float, ste_to_input: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(h, t)
        ctx.bandwidth, ctx.ste_to_input = bandwidth, ste_to_input
        return h * (h > t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        h, t = ctx.saved_tensors
        ste = (t / ctx.bandwidth) * _rectangle(h, t, ctx.bandwidth) * grad
        grad_h = (h > t) * grad
        if ctx.ste_to_input:
            grad_h = grad_h + ste
        return grad_h, -ste, None, None


class _PairStep(torch.autograd.Function):
    """sae_lens's Step (the L0 counter, straight-through gradients) on gathered pairs, elementwise."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, t: torch.Tensor, bandwidth: float, ste_to_input: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(h, t)
        ctx.bandwidth, ctx.ste_to_input = bandwidth, ste_to_input
        return (h > t).to(h)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        h, t = ctx.saved_tensors
        ste = (1.0 / ctx.bandwidth) * _rectangle(h, t, ctx.bandwidth) * grad
        return (ste if ctx.ste_to_input else None), -ste, None, None


def supports_sparse_threshold(sae: TrainingSAE) -> bool:
    """SAEs whose loss this module reproduces exactly (else the dense step is used).

    The loss mirrored is that of the sae_lens class, so the class decides: exactly StandardTrainingSAE
    (ReLU + L1) or JumpReLUTrainingSAE (JumpReLU + L0), not subclasses that may change the loss.
    """
    cfg = sae.cfg
    if not cfg.apply_b_dec_to_input:
        return False
    if type(sae) is StandardTrainingSAE:
        return getattr(cfg, "lp_norm", 1.0) == 1.0
    if type(sae) is JumpReLUTrainingSAE:
        return cfg.jumprelu_sparsity_loss_mode in ("step", "quadratic") and cfg.pre_act_loss_coefficient is None
    return False


def sparse_threshold_forward(
    sae: TrainingSAE, x: torch.Tensor, coefficients: dict[str, float]
) -> SparseStepOutput | None:
    """sae_lens's training loss of a ReLU or JumpReLU SAE over the support pairs; None while too dense.

    Only for SAEs that `supports_sparse_threshold` accepts.
    """
    if not supports_sparse_threshold(sae):
        raise ValueError(f"the sparse threshold kernels do not reproduce the loss of {type(sae).__name__}")
    jump = type(sae) is JumpReLUTrainingSAE
    with torch.no_grad():
        if jump:
            sae.threshold.data.clamp_(min=0.0)  # sae_lens's projection at the start of training_forward_pass
        hidden_pre = torch.addmm(
            sae.b_enc, x - sae.b_dec, sae.W_enc, out=_scratch("hidden_pre", (x.shape[0], sae.cfg.d_sae), x)
        )
        if jump:
            support = (hidden_pre > sae.threshold) | _rectangle(hidden_pre, sae.threshold, sae.bandwidth)
        else:
            support = hidden_pre > 0
        if int(support.sum()) > MAX_SUPPORT_DENSITY * support.numel():
            return None
        rows, cols = support.nonzero().unbind(1)  # row-major, so sorted by row
    active = Active(rows, cols, x.shape[0], sae.cfg.d_sae)
    pre = GatherPreActivations.apply(x, sae.b_dec, sae.W_enc, sae.b_enc, active, hidden_pre[rows, cols])
    W_dec_norm = sae.W_dec.norm(dim=1)
    per_row = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if jump:
        t = sae.threshold[cols]
        values = _PairJumpReLU.apply(pre, t, sae.bandwidth, sae.cfg.jumprelu_ste_to_input)
        l0 = per_row.index_add(0, rows, _PairStep.apply(pre, t, sae.bandwidth, sae.cfg.jumprelu_ste_to_input))
        if sae.cfg.jumprelu_sparsity_loss_mode == "quadratic":
            target = sae.cfg.target_l0
            l0 = 2 / target * (l0 - target) ** 2
        sparsity_loss = (coefficients["l0"] * l0).mean()
    else:
        values = torch.relu(pre)
        l1 = per_row.index_add(0, rows, values * W_dec_norm[cols])  # ||relu(pre) * ||W_dec|| ||_1 per token
        sparsity_loss = (coefficients["l1"] * l1).mean()
    sae_out = SparseDecode.apply(values, sae.W_dec, active) + sae.b_dec
    mse_loss = (sae_out - x).pow(2).sum(-1).mean()
    return SparseStepOutput(
        loss=mse_loss + sparsity_loss, mse_loss=mse_loss, sae_out=sae_out, active=active, values=values
    )
