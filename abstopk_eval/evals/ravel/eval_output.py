"""Output schema of RAVEL: sae_bench's RAVEL metrics plus the model's knowledge of the facts, per attribute."""

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
from sae_bench.evals.ravel.eval_output import EVAL_TYPE_ID_RAVEL, RAVELMetricResults

from abstopk_eval.evals.ravel.eval_config import RavelEvalConfig


@dataclass
class RavelKnowledgeMetrics(BaseMetrics):
    base_accuracy: float = Field(
        title="Base accuracy",
        description="Model accuracy (first token, greedy) on every candidate prompt, mean over attributes",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    chance_accuracy: float = Field(
        title="Chance accuracy", description="Majority-value baseline on the same prompts, mean over attributes"
    )
    meaningful: bool = Field(
        title="Meaningful",
        description="Every scored attribute's base accuracy exceeds its chance by the margin",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    n_entities: int = Field(
        title="Entities", description="Entities kept after filtering (all types)", json_schema_extra=DEFAULT_DISPLAY
    )
    n_attributes: int = Field(
        title="Attributes", description="Attributes scored (with enough pairs)", json_schema_extra=DEFAULT_DISPLAY
    )
    n_cause_pairs: int = Field(title="Cause pairs", description="Evaluation cause pairs, all attributes")
    n_isolation_pairs: int = Field(title="Isolation pairs", description="Evaluation isolation pairs, all attributes")


@dataclass
class RavelMetricCategories(BaseMetricCategories):
    ravel: RAVELMetricResults = Field(
        title="RAVEL", description="Cause, isolation and disentanglement (sae_bench)", json_schema_extra=DEFAULT_DISPLAY
    )
    knowledge: RavelKnowledgeMetrics = Field(title="Knowledge", description="What the model knows of the facts scored")
    ravel_other_error_mode: RAVELMetricResults | None = Field(
        default=None,
        title="RAVEL, other error mode",
        description="The same latents scored with the other add_error setting (with the SAE error kept when the "
        "headline drops it, as sae_bench does, and vice versa)",
    )


@dataclass
class RavelResultDetail(BaseResultDetail):
    entity_type: str = Field(title="Entity type", description="")
    attribute: str = Field(title="Attribute", description="")
    cause_score: float = Field(title="Cause", description="Fraction of cause pairs predicting the source's value")
    isolation_score: float = Field(
        title="Isolation", description="Fraction of isolation pairs keeping the base's value"
    )
    disentanglement_score: float = Field(title="Disentanglement", description="(cause + isolation) / 2")
    n_latents: int = Field(title="Latents", description="Latents interchanged (chosen on the training pairs)")
    base_accuracy: float = Field(
        title="Base accuracy", description="Model accuracy on the attribute's candidate prompts"
    )
    chance_accuracy: float = Field(title="Chance", description="Majority-value baseline")
    meaningful: bool = Field(title="Meaningful", description="base accuracy >= chance + margin")
    n_cause_pairs: int = Field(title="Cause pairs", description="")
    n_isolation_pairs: int = Field(title="Isolation pairs", description="")
    cause_score_other_error_mode: float | None = Field(default=None, title="Cause (other error mode)", description="")
    isolation_score_other_error_mode: float | None = Field(
        default=None, title="Isolation (other error mode)", description=""
    )


@dataclass(config=ConfigDict(title="RAVEL (abstopk-eval)"))
class RavelEvalOutput(BaseEvalOutput[RavelEvalConfig, RavelMetricCategories, RavelResultDetail]):
    """RAVEL: interchanging the SAE latents selected for one attribute between two entities should change that
    attribute's prediction to the source entity's value (cause) and leave the entity's other attributes as they
    were (isolation). Only prompts the model answers correctly are used; the model's accuracy is reported."""

    eval_config: RavelEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: RavelMetricCategories
    eval_result_details: list[RavelResultDetail] = Field(
        default_factory=list, title="Per attribute", description="One entry per (entity type, attribute)"
    )
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_RAVEL, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, corpus, package versions"
    )
