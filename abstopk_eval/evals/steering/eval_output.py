"""Output schema of the steering evaluation (paper Table 1): refusal on HarmBench, MMLU and CE under steering."""

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

from abstopk_eval.evals.steering.eval_config import SteeringEvalConfig

EVAL_TYPE_ID_STEERING = "steering"


@dataclass
class SafetyMetrics(BaseMetrics):
    harmbench_refusal_rate: float = Field(
        title="HarmBench refusal",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Fraction of HarmBench test (standard) behaviours refused under steering "
        "(judged as eval_config.refusal_judge says)",
    )
    n_test_behaviours: int = Field(title="Test behaviours", description="HarmBench test behaviours scored")
    val_refusal_rate: float = Field(
        title="Validation refusal",
        description="Refusal rate on the HarmBench val behaviours at the chosen setting (selection objective)",
    )
    n_val_behaviours: int = Field(
        title="Validation behaviours", description="HarmBench val behaviours used for selection"
    )


@dataclass
class AbilityMetrics(BaseMetrics):
    mmlu_accuracy: float = Field(
        title="MMLU",
        json_schema_extra=DEFAULT_DISPLAY,
        description="MMLU accuracy under steering (letter logits A-D after the chat-templated question)",
    )
    n_mmlu: int = Field(title="MMLU items", description="MMLU items scored")
    ce_loss: float = Field(
        title="CE",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Next-token cross-entropy on held-out Wikipedia text under steering",
    )
    ce_loss_increase: float = Field(
        title="CE increase", description="ce_loss minus the unsteered model's CE on the same text"
    )
    ce_loss_unsteered: float = Field(title="CE unsteered", description="Unsteered model's CE on the same text")
    n_ce_tokens: int = Field(title="CE tokens", description="Next-token predictions the CE averages")


@dataclass
class InterventionMetrics(BaseMetrics):
    method: str = Field(title="Method", description="'original', 'dim' or 'sae'")
    kind: str = Field(title="Intervention", description="none, add (DiM), clamp or sae_add (SAE latent)")
    steered: bool = Field(
        title="Steered", description="False when no setting met the CE bound (the model is left unsteered)"
    )
    latent: int | None = Field(default=None, title="Latent", description="Index of the steered SAE latent")
    latent_cosine_to_dim: float | None = Field(
        default=None,
        title="cos(W_dec[j], d)",
        description="Cosine of the chosen latent's decoder row with the DiM vector",
    )
    latent_mean_diff: float | None = Field(
        default=None,
        title="Latent mean difference",
        description="mean z_j(harmful) - mean z_j(harmless) at the last prompt position",
    )
    latent_rank: str | None = Field(
        default=None, title="Candidate", description="Why the latent was a candidate (e.g. cos#1)"
    )
    value: float | None = Field(
        default=None, title="Value c", description="Clamp value (clamp) or decoder-row multiple (sae_add)"
    )
    strength: float | None = Field(default=None, title="Strength m", description="Steering strength in units of ||d||")
    steering_norm: float | None = Field(
        default=None, title="Steering norm", description="Norm of the added / clamped vector"
    )
    dim_norm: float = Field(default=0.0, title="||d||", description="Norm of the Difference-in-Means vector")
    val_ce_increase: float | None = Field(
        default=None,
        title="Validation CE increase",
        description="CE increase on the validation text at the chosen setting",
    )
    n_settings_tried: int = Field(default=0, title="Settings tried", description="Validation settings evaluated")


@dataclass
class SteeringMetricCategories(BaseMetricCategories):
    safety: SafetyMetrics = Field(title="Safety", description="Refusal of harmful behaviours (HarmBench)")
    general_ability: AbilityMetrics = Field(title="General ability", description="MMLU accuracy and held-out CE")
    intervention: InterventionMetrics = Field(title="Intervention", description="The chosen steering setting")


@dataclass
class SteeringResultDetail(BaseResultDetail):
    behaviour: str = Field(title="Behaviour", description="HarmBench test behaviour (the user message)")
    response: str = Field(title="Response", description="Greedy response under steering")
    refused: bool = Field(title="Refused", description="Judge verdict")


@dataclass(config=ConfigDict(title="Steering vs Difference-in-Means (abstopk-eval)"))
class SteeringEvalOutput(BaseEvalOutput[SteeringEvalConfig, SteeringMetricCategories, SteeringResultDetail]):
    """Refusal steering with one SAE latent (or the DiM vector) at layer L: HarmBench refusal vs MMLU and CE."""

    eval_config: SteeringEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: SteeringMetricCategories
    eval_result_details: list[SteeringResultDetail] = Field(
        default_factory=list, title="Examples", description="A few test responses under steering"
    )
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_STEERING, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, corpus, package versions"
    )
