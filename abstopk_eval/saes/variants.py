"""The six SAE variants, as a small typed registry over sae_lens training configs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sae_lens.saes.abstopk_sae import AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from abstopk_eval.registry import Registry
from abstopk_eval.saes.batch_abstopk import BatchAbsTopKTrainingSAE, BatchAbsTopKTrainingSAEConfig


@dataclass(frozen=True)
class SparsityHyperparams:
    """Variant-specific sparsity settings (the k-sparse variants only use `k` and the aux-k coefficient)."""

    k: int = 0
    l1_coefficient: float = 0.0
    """ReLU SAE: weight of sum_i |z_i| * ||d_i||."""
    l0_coefficient: float = 0.0
    """JumpReLU SAE: weight of the (STE) L0 penalty."""
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.1
    jumprelu_sparsity_loss_mode: str = "step"
    """sae_lens mode: "step" (DeepMind's L0) or "quadratic" (GemmaScope 2: 2/k * (L0 - k)^2, target L0 = k)."""
    jumprelu_ste_to_input: bool = False
    """Straight-through gradient also reaches the pre-activations (Anthropic's setup), not only the threshold.

    With Adam the threshold moves by about lr per step, so with the threshold alone the L0 barely moves in a
    few hundred steps at our input scale (E||x||^2 = d_model); measured on gemma-3-270m L9, quick preset:
    L0 650-1,300 after 128 steps with it off (init threshold 0.1-2.0), ~62 with it on (l0 coefficient 0.5,
    init threshold 1.0)."""
    aux_loss_coefficient: float = 1 / 32


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    signed: bool
    """Latents may be negative (abstopk family)."""
    uses_k: bool
    """Sparsity is set by k (and the run id carries it)."""
    build: Callable[[int, int, SparsityHyperparams], TrainingSAE]


def _topk_family(cfg_cls, sae_cls):
    def build(d_in: int, d_sae: int, hp: SparsityHyperparams) -> TrainingSAE:
        cfg = cfg_cls(
            d_in=d_in,
            d_sae=d_sae,
            k=hp.k,
            aux_loss_coefficient=hp.aux_loss_coefficient,
            rescale_acts_by_decoder_norm=True,
            apply_b_dec_to_input=True,
        )
        return sae_cls(cfg)

    return build


def _relu(d_in: int, d_sae: int, hp: SparsityHyperparams) -> TrainingSAE:
    cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=hp.l1_coefficient, apply_b_dec_to_input=True)
    return StandardTrainingSAE(cfg)


def _jumprelu(d_in: int, d_sae: int, hp: SparsityHyperparams) -> TrainingSAE:
    cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        l0_coefficient=hp.l0_coefficient,
        jumprelu_bandwidth=hp.jumprelu_bandwidth,
        jumprelu_init_threshold=hp.jumprelu_init_threshold,
        jumprelu_sparsity_loss_mode=hp.jumprelu_sparsity_loss_mode,
        jumprelu_ste_to_input=hp.jumprelu_ste_to_input,
        target_l0=float(hp.k) if hp.jumprelu_sparsity_loss_mode == "quadratic" else None,
        apply_b_dec_to_input=True,
    )
    return JumpReLUTrainingSAE(cfg)


VARIANTS: Registry[VariantSpec] = Registry("SAE variant")


def register_variant(spec: VariantSpec) -> VariantSpec:
    return VARIANTS.register(spec.name, spec)


register_variant(VariantSpec("relu", "ReLU + L1 penalty (sae_lens standard)", False, False, _relu))
register_variant(
    VariantSpec(
        "jumprelu", "JumpReLU, L0 penalty, straight-through estimator (bandwidth 0.001)", False, False, _jumprelu
    )
)
register_variant(
    VariantSpec("topk", "per-sample TopK, z >= 0", False, True, _topk_family(TopKTrainingSAEConfig, TopKTrainingSAE))
)
register_variant(
    VariantSpec(
        "batchtopk",
        "batch-level TopK (B*k over the batch), z >= 0; inference threshold",
        False,
        True,
        _topk_family(BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE),
    )
)
register_variant(
    VariantSpec(
        "abstopk",
        "per-sample AbsTopK: k largest |u| keep their sign (sae_lens abstopk)",
        True,
        True,
        _topk_family(AbsTopKTrainingSAEConfig, AbsTopKTrainingSAE),
    )
)
register_variant(
    VariantSpec(
        "batch-abstopk",
        "batch-level AbsTopK (the paper's official form); inference |u| threshold",
        True,
        True,
        _topk_family(BatchAbsTopKTrainingSAEConfig, BatchAbsTopKTrainingSAE),
    )
)

ALL_VARIANTS: tuple[str, ...] = tuple(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    return VARIANTS.lookup(name)


DEFAULT_PRESET_NAME = "quick"


def sae_id(variant: str, k: int, seed: int, preset: str = DEFAULT_PRESET_NAME) -> str:
    """Directory name of one trained SAE: `<variant>[_k<k>]_s<seed>[_<preset>]`.

    k is left out for variants without one (relu, jumprelu); the preset only when it is not `quick`.
    """
    spec = get_variant(variant)
    name = f"{variant}_k{k}_s{seed}" if spec.uses_k else f"{variant}_s{seed}"
    return name if preset == DEFAULT_PRESET_NAME else f"{name}_{preset}"


def training_config_class(sae: TrainingSAE) -> type[TrainingSAEConfig]:
    return type(sae.cfg)
