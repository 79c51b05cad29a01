"""Core's inference-time options, as the paper's code (GoXzascc/AbsTopK-SAE) evaluates: batch selection at
inference for batch-level SAEs, and one trained SAE scored at several inference k.

- `core.inference=batch`: a batch-level SAE (batchtopk, batch-abstopk) keeps the k*B largest pre-activations
  (|u| when signed, sign kept; relu(u) otherwise) of the B rows encoded together, as in training, instead of its
  checkpoint's per-latent threshold (calibrated so the mean L0 on training activations is k,
  `saes.calibration`). B is the rows of one call: `reconstruction_stats`' batch of held-out rows, and the
  non-special positions of one CE batch in the splice (special positions are kept, never in the pool). Per-sample
  and threshold variants (topk, abstopk, relu, jumprelu) are unaffected.
- `core.inference_k=[16, 32, 64, 128]`: every SAE whose inference takes a k (per-sample topk / abstopk, and the
  batch-level ones under `inference=batch`) is also scored with k replaced by each value, the trained weights
  unchanged; the paper's Appendix D sweep is this inference sweep, beside ours over separately trained SAEs.

Each result records the rule it was scored with (`eval_result_unstructured["inference"]`) and the sweep
(`eval_result_unstructured["inference_k_sweep"]`); results under either option go to `core@<tag>.json`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.saes.batchtopk_sae import BatchTopK

from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.provenance import SaeProvenance
from abstopk_eval.saes.batch_abstopk import BatchAbsTopK
from abstopk_eval.saes.signs import has_signed_latents
from abstopk_eval.saes.variants import VARIANTS, SelectionRule

BATCH = "batch"
THRESHOLD = "threshold"
INFERENCE_OPTIONS = (THRESHOLD, BATCH)
"""Values of `core.inference`; THRESHOLD (the checkpoint's own rule) is the default."""


class BatchSelectSAE(torch.nn.Module):
    """A batch-level checkpoint encoding by batch top-(k*B) over the rows of each call (the training rule)."""

    def __init__(self, sae: SAE, k: float, signed: bool):
        super().__init__()
        self.sae, self.k, self.signed = sae, k, signed
        self.select = BatchAbsTopK(k) if signed else BatchTopK(k)
        self.cfg = sae.cfg

    @property
    def W_enc(self) -> torch.Tensor:
        return self.sae.W_enc

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.sae.process_sae_in(x) @ self.sae.W_enc + self.sae.b_enc
        return self.select(pre.reshape(-1, pre.shape[-1])).reshape(pre.shape)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z)


@dataclass(frozen=True)
class InferencePlan:
    """How one SAE is scored: the encoder used, the rule's label, and the k it takes (None: no k)."""

    sae: Any
    rule: str
    k: float | None

    def record(self, option: str, batch_rows: int) -> dict[str, Any]:
        out: dict[str, Any] = {"option": option, "rule": self.rule, "k": self.k}
        if isinstance(self.sae, BatchSelectSAE):
            out["batch_rows_reconstruction"] = batch_rows
            out["batch_rows_splice"] = "non-special positions of one CE batch"
        return out


def _variant_and_k(ctx: EvalContext, sae_id: str, sae: SAE) -> tuple[str | None, float | None]:
    prov = ctx.sae_provenance.get(sae_id) or SaeProvenance.from_sae(sae_id, sae)
    k = prov.k if prov.k is not None else getattr(sae.cfg, "k", None)
    return prov.variant, k


def _is_batch_level(variant: str | None, sae: SAE) -> bool:
    if variant in VARIANTS:
        return VARIANTS[variant].selection is SelectionRule.BATCH_TOPK
    return variant is None and sae.cfg.architecture() == "batch_abstopk"


def inference_plan(ctx: EvalContext, sae_id: str, sae: SAE, option: str) -> InferencePlan:
    """The encoder `sae_id` is scored with under `core.inference=option`."""
    variant, k = _variant_and_k(ctx, sae_id, sae)
    if _is_batch_level(variant, sae):
        if option == BATCH:
            if k is None:
                raise UserError(f"{sae_id}: core.inference=batch needs the SAE's k, and none is recorded")
            return InferencePlan(BatchSelectSAE(sae, k, has_signed_latents(sae)), f"batch top-(k*B), k={k:g}", k)
        return InferencePlan(sae, "threshold (checkpoint)", None)
    if hasattr(sae.cfg, "k"):
        return InferencePlan(sae, f"per-sample top-k, k={sae.cfg.k}", sae.cfg.k)
    return InferencePlan(sae, "threshold (checkpoint)", None)


def with_inference_k(plan: InferencePlan, k: int) -> InferencePlan | None:
    """The same trained SAE with inference k replaced by `k`; None where its inference takes no k."""
    if plan.k is None or not 1 <= k <= plan.sae.cfg.d_sae:
        return None
    if isinstance(plan.sae, BatchSelectSAE):
        return InferencePlan(BatchSelectSAE(plan.sae.sae, k, plan.sae.signed), f"batch top-(k*B), k={k}", k)
    # a shallow copy shares the weights (no copy of a paper-size SAE per k); own cfg and submodules for the new k
    swept = copy.copy(plan.sae)
    swept._modules = dict(plan.sae._modules)
    swept.cfg = copy.copy(plan.sae.cfg)
    swept.cfg.k = k
    swept.activation_fn = swept.get_activation_fn()
    return InferencePlan(swept, f"per-sample top-k, k={k}", k)
