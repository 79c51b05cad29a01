"""Random inference SAEs and the sign flip that every signed metric must be invariant to."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from sae_lens import SAE
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from safetensors.torch import save_file

from abstopk_eval.saes.batch_abstopk import BatchAbsTopKSAE, BatchAbsTopKSAEConfig
from abstopk_eval.saes.formats import RawSAE
from tests.helpers.models import D_MODEL

SAE_KINDS = ("relu", "jumprelu", "topk", "abstopk", "batch-abstopk")
"""Inference SAE classes `random_sae` builds, named like the variants that save them."""


def random_sae(
    kind: str = "abstopk",
    *,
    d_in: int = D_MODEL,
    d_sae: int = 64,
    k: int = 4,
    seed: int = 0,
    scale: float = 0.3,
    threshold: float = 0.8,
) -> SAE:
    """An SAE of `kind` whose every parameter is N(0, scale^2) (seeded), so signed latents fire with both signs;
    `k` for the k-sparse kinds, `threshold` (the inference threshold) for jumprelu and batch-abstopk."""
    torch.manual_seed(seed)
    if kind == "abstopk":
        sae: SAE = AbsTopKSAE(AbsTopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    elif kind == "batch-abstopk":
        sae = BatchAbsTopKSAE(BatchAbsTopKSAEConfig(d_in=d_in, d_sae=d_sae))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    elif kind == "relu":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    else:
        raise ValueError(f"unknown SAE kind {kind!r}; known: {', '.join(SAE_KINDS)}")
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * scale)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(threshold)
    return sae


def negate_latent(sae: SAE, j: int) -> SAE:
    """A copy of `sae` with latent `j` negated (encoder column, encoder bias, decoder row): the same map for a
    signed SAE, so no metric may change."""
    flipped = copy.deepcopy(sae)
    with torch.no_grad():
        flipped.W_enc[:, j] *= -1
        flipped.b_enc[j] *= -1
        flipped.W_dec[j] *= -1
    return flipped


def random_raw_sae(d_in: int = D_MODEL, d_sae: int = 64, activation: str = "abstopk", k: int | None = 4) -> RawSAE:
    """Seeded random weights (unit decoder rows, zero biases) as an external checkpoint's tensors."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    return RawSAE(
        W_enc=torch.randn(d_in, d_sae, generator=g),
        W_dec=W_dec / W_dec.norm(dim=-1, keepdim=True),
        b_enc=torch.zeros(d_sae),
        b_dec=torch.zeros(d_in),
        activation=activation,
        k=k,
    )


def save_raw_safetensors(path: Path, raw: RawSAE, **meta: str) -> Path:
    """`raw`'s four tensors as a plain safetensors file with string metadata `meta` (activation, k, model, ...)."""
    save_file({"W_enc": raw.W_enc, "W_dec": raw.W_dec, "b_enc": raw.b_enc, "b_dec": raw.b_dec}, path, metadata=meta)
    return path
