"""Batch-level AbsTopK: the paper's official form (its code calls it BatchAbsoluteK).

Training keeps the B*k largest |pre-activations| across the whole batch, with their sign
(like BatchTopK, but by magnitude and without a ReLU). A running threshold on |u| (an EMA of
the smallest selected magnitude, as sae_lens does for BatchTopK) replaces the batch selection at
inference: z_i = u_i if |u_i| > theta_i else 0. sae_lens ships only the per-sample `abstopk`, so
this module adds both classes and registers them in sae_lens's registry under `batch_abstopk`;
checkpoints then save and reload with `sae_lens.SAE.load_from_disk` once this package is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.saes.abstopk_sae import AbsTopKTrainingSAE
from sae_lens.saes.sae import SAE, SAEConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig
from torch import nn
from typing_extensions import override

ARCHITECTURE = "batch_abstopk"


class BatchAbsTopK(nn.Module):
    """Keep the k*n_samples largest |x| over the whole batch, signs preserved."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten()
        n_keep = int(self.k * x.shape[:-1].numel())
        idx = torch.topk(flat.abs(), n_keep, sorted=False).indices
        out = torch.zeros_like(flat)
        out.scatter_(0, idx, flat.gather(0, idx))
        return out.reshape(x.shape)


def signed_threshold(hidden_pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Inference rule: keep u where |u| > threshold (per latent), with its sign."""
    return hidden_pre * (hidden_pre.abs() > threshold).to(hidden_pre.dtype)


@dataclass
class BatchAbsTopKSAEConfig(SAEConfig):
    """Inference config: a per-latent magnitude threshold replaces the batch selection."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class BatchAbsTopKSAE(SAE[BatchAbsTopKSAEConfig]):
    """Inference SAE for batch-abstopk checkpoints: z = u * 1[|u| > threshold]."""

    b_enc: nn.Parameter
    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return nn.Identity()

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(signed_threshold(hidden_pre, self.threshold))

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out_pre = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)
        return self.reshape_fn_out(sae_out_pre, self.d_head)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        # u_i scales by ||W_dec_i||, so the threshold must too (as for JumpReLU).
        norms = self.W_dec.norm(dim=-1)
        super().fold_W_dec_norm()
        self.threshold.data = self.threshold.data * norms


@dataclass
class BatchAbsTopKTrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config: `k` is the average number of active latents per sample (may be fractional).

    Args:
        topk_threshold_lr: EMA rate of the inference threshold towards the smallest selected |u|.
    """

    k: float = 100  # type: ignore[assignment]
    topk_threshold_lr: float = 0.01

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return BatchAbsTopKSAEConfig


class BatchAbsTopKTrainingSAE(AbsTopKTrainingSAE):
    """Batch-level AbsTopK training SAE; saves as a `batch_abstopk` inference SAE with a threshold."""

    topk_threshold: torch.Tensor
    cfg: BatchAbsTopKTrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: BatchAbsTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]
        self.register_buffer("topk_threshold", torch.tensor(0.0, dtype=torch.double, device=self.W_dec.device))

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return BatchAbsTopK(self.cfg.k)

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        self.update_topk_threshold(output.feature_acts)
        output.metrics["topk_threshold"] = self.topk_threshold
        return output

    @torch.no_grad()
    def update_topk_threshold(self, feature_acts: torch.Tensor) -> None:
        active = feature_acts != 0
        if active.any():
            smallest = feature_acts[active].abs().min().to(self.topk_threshold.dtype)
            lr = self.cfg.topk_threshold_lr
            self.topk_threshold = (1 - lr) * self.topk_threshold + lr * smallest

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        super().fold_activation_norm_scaling_factor(scaling_factor)
        if self.cfg.rescale_acts_by_decoder_norm:
            self.topk_threshold /= scaling_factor

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        threshold = state_dict.pop("topk_threshold").item()
        state_dict["threshold"] = torch.ones_like(self.b_enc) * threshold


def register() -> None:
    """Register the batch-abstopk classes in sae_lens (idempotent)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, BatchAbsTopKSAE, BatchAbsTopKSAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, BatchAbsTopKTrainingSAE, BatchAbsTopKTrainingSAEConfig)


register()
