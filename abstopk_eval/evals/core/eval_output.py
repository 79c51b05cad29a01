"""Output schema of the core evaluation: sae_bench's core categories plus signed-latent metrics."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import (
    DEFAULT_DISPLAY,
    BaseEvalOutput,
    BaseMetricCategories,
    BaseMetrics,
    BaseResultDetail,
)
from sae_bench.evals.core.eval_output import (
    ModelBehaviorPreservationMetrics,
    ModelPerformancePreservationMetrics,
    ReconstructionQualityMetrics,
    ShrinkageMetrics,
    TokenStatsMetrics,
)

from abstopk_eval.evals.core.eval_config import CoreEvalConfig

EVAL_TYPE_ID_CORE = "core"


@dataclass
class SignedSparsityMetrics(BaseMetrics):
    """Activity counted as z != 0, so negative (AbsTopK) activations are active."""

    l0: float = Field(
        title="L0", description="Mean number of latents with z != 0 per token", json_schema_extra=DEFAULT_DISPLAY
    )
    l1: float = Field(title="L1", description="Mean sum of |z| per token")
    frac_negative: float = Field(
        title="Negative fraction",
        description="Fraction of active latent values that are negative",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    dead_fraction: float = Field(
        title="Dead fraction",
        description="Fraction of latents never active (z != 0) on the held-out tokens",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    frac_alive: float = Field(title="Alive fraction", description="1 - dead_fraction")
    freq_over_1_percent: float = Field(
        title="Dense >1%", description="Fraction of latents active on more than 1% of tokens"
    )
    freq_over_10_percent: float = Field(
        title="Dense >10%", description="Fraction of latents active on more than 10% of tokens"
    )


@dataclass
class NormalisedReconstructionMetrics(BaseMetrics):
    nmse: float = Field(
        title="nMSE",
        description="sum ||x - x_hat||^2 / sum ||x||^2 on raw activations",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    fvu: float = Field(
        title="FVU",
        description="sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (fraction of variance unexplained)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    loss_recovered: float = Field(
        title="Loss recovered",
        description="(CE_zero - CE_sae) / (CE_zero - CE_clean), CE_zero with every position zeroed (sae_bench)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    nmse_per_token_mean: float | None = Field(
        default=None,
        title="nMSE (per-token mean)",
        description="mean over tokens of ||x - x_hat||^2 / ||x||^2: the average the paper's code reports (`nmse` above "
        "is the ratio of sums); None in results written before it existed",
    )
    mse_per_element: float | None = Field(
        default=None,
        title="MSE per element",
        description="sum ||x - x_hat||^2 / (tokens * d_in); sae_bench's `mse` divides by its batch's tokens instead",
    )
    ce_loss_with_ablation_bos_kept: float | None = Field(
        default=None,
        title="CE zero-ablated, special positions kept",
        description="CE with the layer output zeroed except at the special positions (BOS, GPT-2 / Pythia EOS), "
        "which keep their activation; sae_bench's `ce_loss_with_ablation` zeroes every position",
    )
    loss_recovered_bos_kept: float | None = Field(
        default=None,
        title="Loss recovered (special positions kept in the ablation)",
        description="(CE_zero_kept - CE_sae) / (CE_zero_kept - CE_clean), with the ablation above",
    )


@dataclass
class BootstrapIntervals(BaseMetrics):
    """95% percentile-bootstrap intervals over held-out examples (sampling noise of the evaluation data)."""

    nmse_low: float = Field(title="nMSE low", description="2.5th percentile of nMSE over resampled row blocks")
    nmse_high: float = Field(title="nMSE high", description="97.5th percentile of nMSE over resampled row blocks")
    fvu_low: float = Field(title="FVU low", description="2.5th percentile of FVU over resampled row blocks")
    fvu_high: float = Field(title="FVU high", description="97.5th percentile of FVU over resampled row blocks")
    loss_recovered_low: float = Field(
        title="Loss recovered low", description="2.5th percentile over resampled sequences"
    )
    loss_recovered_high: float = Field(
        title="Loss recovered high", description="97.5th percentile over resampled sequences"
    )
    ce_loss_with_sae_low: float = Field(
        title="CE with SAE low", description="2.5th percentile over resampled sequences"
    )
    ce_loss_with_sae_high: float = Field(
        title="CE with SAE high", description="97.5th percentile over resampled sequences"
    )
    kl_div_with_sae_low: float = Field(title="KL low", description="2.5th percentile over resampled sequences")
    kl_div_with_sae_high: float = Field(title="KL high", description="97.5th percentile over resampled sequences")
    nmse_per_token_mean_low: float | None = Field(
        default=None, title="Per-token nMSE low", description="2.5th percentile over resampled row blocks"
    )
    nmse_per_token_mean_high: float | None = Field(
        default=None, title="Per-token nMSE high", description="97.5th percentile over resampled row blocks"
    )
    n_resamples: int = Field(title="Resamples", description="Bootstrap resamples")
    n_sequences: int = Field(title="Sequences", description="Held-out sequences resampled for CE / KL")
    n_row_blocks: int = Field(
        title="Row blocks", description="Blocks of contiguous activation rows resampled for nMSE / FVU"
    )


@dataclass
class CoreMetricCategories(BaseMetricCategories):
    model_behavior_preservation: ModelBehaviorPreservationMetrics = Field(
        title="Model Behavior Preservation", description="KL to the clean model"
    )
    model_performance_preservation: ModelPerformancePreservationMetrics = Field(
        title="Model Performance Preservation", description="Cross-entropy"
    )
    reconstruction_quality: ReconstructionQualityMetrics = Field(
        title="Reconstruction Quality", description="sae_bench reconstruction metrics"
    )
    normalised_reconstruction: NormalisedReconstructionMetrics = Field(
        title="Normalised reconstruction", description="nMSE, FVU, loss recovered"
    )
    shrinkage: ShrinkageMetrics = Field(title="Shrinkage", description="Norm of reconstructions vs inputs")
    sparsity: SignedSparsityMetrics = Field(title="Sparsity", description="Sign-correct sparsity and liveness")
    token_stats: TokenStatsMetrics = Field(title="Token Statistics", description="Tokens used")
    bootstrap_ci95: BootstrapIntervals = Field(
        title="Bootstrap 95% intervals", description="Sampling noise of the held-out data"
    )


@dataclass
class CoreResultDetail(BaseResultDetail):
    pass


@dataclass(config=ConfigDict(title="Core (abstopk-eval)"))
class CoreEvalOutput(BaseEvalOutput[CoreEvalConfig, CoreMetricCategories, CoreResultDetail]):
    """Reconstruction, sparsity and model-preservation metrics for one SAE, correct for signed latents."""

    eval_config: CoreEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: CoreMetricCategories
    eval_result_details: list[CoreResultDetail] = Field(default_factory=list, title="Details", description="unused")
    eval_type_id: str = Field(default=EVAL_TYPE_ID_CORE, title="Eval Type ID", description="The type of the evaluation")
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        title="Provenance",
        description="model, layer, variant, k, seed, corpus, token counts, package versions",
    )
