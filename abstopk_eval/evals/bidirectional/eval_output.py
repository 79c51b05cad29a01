"""Output schema of the bidirectional case study."""

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

from abstopk_eval.evals.bidirectional.eval_config import BidirectionalEvalConfig

EVAL_TYPE_ID_BIDIRECTIONAL = "bidirectional"


@dataclass
class BidirectionalMetrics(BaseMetrics):
    frac_axes_bidirectional: float = Field(
        title="Axes in one signed latent",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Fraction of axes whose top latent takes opposite signs on the two poles",
    )
    frac_axes_split: float = Field(
        title="Axes split in two latents",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Fraction of axes carried by one latent per pole",
    )
    frac_axes_one_sided: float = Field(
        title="Axes with one pole only", description="Fraction of axes where only one pole has a latent of its own"
    )
    mean_opposite_sign_fraction: float = Field(
        title="Mean opposite-sign fraction",
        description="Mean over axes of the fraction of pairs where the top latent has opposite nonzero signs",
    )
    n_axes: int = Field(title="Axes", description="Axes scored")
    n_pairs: int = Field(title="Pairs", description="Minimal pairs scored")


@dataclass
class BidirectionalMetricCategories(BaseMetricCategories):
    bidirectional: BidirectionalMetrics = Field(
        title="Bidirectional", description="One signed latent vs two split atoms per axis"
    )


@dataclass
class AxisDetail(BaseResultDetail):
    axis: str = Field(title="Axis", description="Bipolar axis")
    poles: list[str] = Field(title="Poles", description="Pole A, pole B")
    n_pairs: int = Field(title="Pairs", description="Minimal pairs of this axis")
    category: str = Field(title="Category", description="bidirectional | split | one-sided | none")
    top_latent: int = Field(title="Top latent", description="Latent with the largest |mean(z_A - z_B)|")
    opposite_sign_fraction: float = Field(
        title="Opposite-sign fraction", description="Pairs where the top latent has opposite nonzero signs"
    )
    top_mean_a: float = Field(
        title="Top latent on pole A",
        description="Mean activation, signed so the latent's dominant sign over both poles is positive "
        "(raw values for non-negative SAEs); pole A positive when near-symmetric",
    )
    top_mean_b: float = Field(title="Top latent on pole B", description="Mean activation, same orientation")
    partner_latent: int = Field(title="Partner latent", description="Strongest latent for the other pole (-1 if none)")
    partner_mean_a: float = Field(title="Partner on pole A", description="Mean |activation| on pole A")
    partner_mean_b: float = Field(title="Partner on pole B", description="Mean |activation| on pole B")


@dataclass(config=ConfigDict(title="Bidirectional features (abstopk-eval)"))
class BidirectionalEvalOutput(BaseEvalOutput[BidirectionalEvalConfig, BidirectionalMetricCategories, AxisDetail]):
    """Per bipolar axis: does one signed latent take both poles, or do two latents split them (the paper's Figure 1)."""

    eval_config: BidirectionalEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: BidirectionalMetricCategories
    eval_result_details: list[AxisDetail] = Field(default_factory=list, title="Per axis")
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_BIDIRECTIONAL, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, versions"
    )
