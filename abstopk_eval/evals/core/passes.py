"""Core's CE / KL passes: one clean pass per held-out batch (cached on disk), then every spliced pass (the
zero-ablation and one per SAE) runs only the blocks after layer L from the clean residual at L.

Clean pass (`clean_pass`, SAE-independent, cached in `models.pass_cache` under the batch's token ids): the
residual after block L, the clean next-token CE per position, and what KL to the clean model needs. KL(p || q)
at a position is ``sum_v p_v log p_v - sum_v p_v logits_q,v + lse(logits_q)``. Where the model's logits are its
linear head's output unchanged (logits = W h + b: Llama, Gemma-3, Qwen3, GPT-2, NeoX), the middle term is
``<W^T p, h_q> + <p, b>``, so storing ``W^T p`` ([T, d_model] per sequence) and ``<p, b>`` replaces the clean
distribution over the vocabulary (a [T, vocab] tensor: gigabytes for Gemma's 262k tokens). Where it is not
(Gemma-2's soft-capped logits), the clean logits are recomputed from the cached residual (blocks L+1.. only)
once per batch and run.

Spliced pass (`spliced_losses`): the replaced residual goes through blocks L+1.. (`ModelAdapter.
logits_from_residual`), and its per-position CE and KL are cached too, keyed by the replaced residual's bytes (so
the zero-ablation, whatever its convention, is computed once per model, layer and data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from abstopk_eval.models.pass_cache import cached_pass, tensor_digest

CLEAN_KIND = "core-clean"
SPLICED_KIND = "core-spliced"


@dataclass
class CleanPass:
    """The SAE-independent pass over one batch of held-out sequences [B, T]."""

    resid: Tensor
    """[B, T, D] residual after block L (the model's dtype)."""
    ce: Tensor
    """[B, T-1] clean next-token CE (float32)."""
    neg_entropy: Tensor
    """[B, T-1] sum_v p log p of the clean distribution."""
    head_moment: Tensor | None
    """[B, T-1, D] W^T p (linear heads), else None (the clean logits are recomputed from `resid`)."""
    bias_moment: Tensor | None
    """[B, T-1] <p, b> for a head with a bias (zeros without one); None with `head_moment`."""


def _logits_and_head(adapter, run: Callable[[], Tensor]) -> tuple[Tensor, Tensor, bool]:
    """(logits, head input, whether logits are the linear head's output unchanged) of one pass."""
    with adapter.capturing_head() as seen:
        logits = run()
    # the head call that produced the returned logits (a first resumed call also runs a checking pass)
    match = [h_in for h_in, h_out in seen if h_out.shape == logits.shape and torch.equal(h_out, logits)]
    linear = adapter.linear_head() is not None and bool(match)
    return logits, (match[-1] if match else seen[-1][0]), linear


def _clean_stats(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(CE, clean probabilities p, sum p log p) per position [B, T-1] from clean logits [B, T, V]."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -logp.gather(-1, tokens[:, 1:, None].to(logp.device)).squeeze(-1)
    p = logp.exp()
    return ce, p, torch.linalg.vecdot(p, logp)


@torch.no_grad()
def clean_pass(adapter, tokens: Tensor, layer: int) -> CleanPass:
    """The clean pass over `tokens` [B, T] (from the adapter's pass cache when it has one)."""

    def build() -> dict[str, Tensor]:
        captured: list[Tensor] = []
        with adapter.replace_output(layer, lambda h: captured.append(h.detach()) or h):
            logits, head_in, linear = _logits_and_head(adapter, lambda: adapter.logits(tokens))
        ce, p, neg_entropy = _clean_stats(logits, tokens)
        out = {"resid": captured[0], "ce": ce, "neg_entropy": neg_entropy}
        if linear:
            weight, bias = adapter.linear_head()
            out["head_moment"] = p @ weight.float()
            out["bias_moment"] = p @ bias.float() if bias is not None else torch.zeros_like(ce)
        return out

    got = cached_pass(adapter, CLEAN_KIND, layer, {"tokens": tensor_digest(tokens)}, build)
    device = adapter.device
    return CleanPass(
        resid=got["resid"].to(device),
        ce=got["ce"],
        neg_entropy=got["neg_entropy"].to(device),
        head_moment=got["head_moment"].to(device) if "head_moment" in got else None,
        bias_moment=got["bias_moment"].to(device) if "bias_moment" in got else None,
    )


@dataclass
class CleanDistribution:
    """The clean probabilities of a batch, recomputed where the head is not linear (at most once per batch)."""

    p: Tensor | None = None


@torch.no_grad()
def spliced_losses(
    adapter, tokens: Tensor, layer: int, clean: CleanPass, resid: Tensor, fallback: CleanDistribution
) -> tuple[Tensor, Tensor]:
    """Per-position CE and KL(clean || spliced) [B, T-1] when block L outputs `resid`: blocks L+1.. only."""

    def build() -> dict[str, Tensor]:
        logits, head_in, _ = _logits_and_head(
            adapter, lambda: adapter.logits_from_residual(resid, layer, tokens, last_only=False)
        )
        scores = logits[:, :-1].float()
        lse = torch.logsumexp(scores, dim=-1)
        ce = lse - scores.gather(-1, tokens[:, 1:, None].to(scores.device)).squeeze(-1)
        if clean.head_moment is not None:
            expected = torch.linalg.vecdot(clean.head_moment, head_in[:, :-1].float()) + clean.bias_moment
        else:
            if fallback.p is None:
                clean_logits = adapter.logits_from_residual(clean.resid, layer, tokens, last_only=False)
                fallback.p = _clean_stats(clean_logits, tokens)[1]
            expected = torch.linalg.vecdot(fallback.p, scores)
        return {"ce": ce, "kl": clean.neg_entropy - expected + lse}

    key = {"tokens": tensor_digest(tokens), "resid": tensor_digest(resid)}
    got = cached_pass(adapter, SPLICED_KIND, layer, key, build)
    return got["ce"], got["kl"]
