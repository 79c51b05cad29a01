"""Output schema of the bidirectional study (definitions: `abstopk_eval.evals.bidirectional.main`)."""

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
    bidirectional_share: float = Field(
        title="Bidirectional share",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Mean over axes (in context) of the best latent's sign consistency x its share of the "
        "contrast: the part of each axis carried by one latent with opposite signs on the two poles",
    )
    bidirectional_share_ci_low: float = Field(title="Bidirectional share, 95% low", description="Bootstrap over pairs")
    bidirectional_share_ci_high: float = Field(
        title="Bidirectional share, 95% high", description="Bootstrap over pairs"
    )
    control_share: float = Field(
        title="Shuffled-pole control",
        json_schema_extra=DEFAULT_DISPLAY,
        description="The same search and score after swapping the poles of a random half of each axis's pairs",
    )
    control_share_ci_high: float = Field(title="Control, 95% high", description="Bootstrap over pairs")
    mean_sign_consistency: float = Field(
        title="Mean sign consistency", description="Mean over axes (in context) of the best latent's sign consistency"
    )
    mean_contrast_share: float = Field(
        title="Mean contrast share", description="Mean over axes (in context) of the best latent's share"
    )
    split_share: float = Field(
        title="Split share",
        description="Mean over axes (in context) of the two best one-pole latents' scores summed (two atoms)",
    )
    frac_axes_bidirectional: float = Field(
        title="Axes in one signed latent",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Fraction of axes (in context) whose bidirectional share is at least min_share and whose "
        "95% interval lies above the control's",
    )
    bidirectional_share_alone: float | None = Field(
        default=None, title="Bidirectional share (alone)", description="As above, the bare words (None: not scored)"
    )
    control_share_alone: float | None = Field(
        default=None, title="Control (alone)", description="The control on the bare words"
    )
    n_axes: int = Field(default=0, title="Axes", description="Axes scored in context")
    n_pairs: int = Field(default=0, title="Pairs", description="Minimal pairs scored in context")
    n_pairs_alone: int = Field(default=0, title="Pairs (alone)", description="Bare-word pairs scored")


@dataclass
class BidirectionalMetricCategories(BaseMetricCategories):
    bidirectional: BidirectionalMetrics = Field(
        title="Bidirectional", description="One signed latent vs two split atoms per axis"
    )


@dataclass
class AxisDetail(BaseResultDetail):
    axis: str = Field(title="Axis", description="Bipolar axis")
    poles: list[str] = Field(title="Poles", description="Pole A, pole B")
    context: str = Field(title="Context", description="'context' (sentence pairs) or 'alone' (bare words)")
    n_pairs: int = Field(title="Pairs", description="Kept pairs of this axis in this context")
    best_latent: int = Field(title="Best latent", description="Latent with the largest bidirectional share")
    bidirectional_share: float = Field(title="Bidirectional share", description="consistency x max(share, 0)")
    ci_low: float = Field(title="95% low", description="Bootstrap over pairs, best latent fixed")
    ci_high: float = Field(title="95% high", description="Bootstrap over pairs, best latent fixed")
    share: float = Field(title="Share", description="Best latent's share of the contrast")
    sign_consistency: float = Field(title="Sign consistency", description="Best latent's sign consistency")
    coverage: float = Field(title="Coverage", description="Fraction of pairs where the best latent is active")
    mean_a: float = Field(title="Best latent on pole A", description="Mean activation, oriented (s z)")
    mean_b: float = Field(title="Best latent on pole B", description="Mean activation, oriented (s z)")
    control_share: float = Field(title="Control", description="Bidirectional share after the pole shuffle")
    control_ci_high: float = Field(title="Control 95% high", description="Bootstrap over pairs")
    control_sign_consistency: float = Field(title="Control consistency", description="Its best latent's")
    split_latents: list[int] = Field(title="Split latents", description="Best pole-A-only and pole-B-only latents")
    split_share: float = Field(title="Split share", description="Their one-pole scores summed")


@dataclass(config=ConfigDict(title="Bidirectional features (abstopk-eval)"))
class BidirectionalEvalOutput(BaseEvalOutput[BidirectionalEvalConfig, BidirectionalMetricCategories, AxisDetail]):
    """Per bipolar axis: is there one latent with opposite signs on the two poles, and how much of the contrast
    does it carry, against a shuffled-pole control (the paper's Figure 1 as a measurement)."""

    eval_config: BidirectionalEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: BidirectionalMetricCategories
    eval_result_details: list[AxisDetail] = Field(default_factory=list, title="Per axis and context")
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_BIDIRECTIONAL, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, versions"
    )
