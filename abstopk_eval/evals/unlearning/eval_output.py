"""Output schema of unlearning: sae_bench's unlearning score, the model's knowledge of the sets, the sweep."""

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
from sae_bench.evals.unlearning.eval_output import EVAL_TYPE_ID_UNLEARNING, UnlearningMetrics

from abstopk_eval.evals.unlearning.eval_config import UnlearningEvalConfig


@dataclass
class UnlearningKnowledgeMetrics(BaseMetrics):
    forget_base_accuracy: float = Field(
        title="Forget base accuracy",
        description="Model accuracy on every candidate prompt (question) of the forget set",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    forget_chance_accuracy: float = Field(title="Forget chance", description="Majority-answer baseline (0.25 for MMLU)")
    retain_base_accuracy: float = Field(
        title="Retain base accuracy", description="Model accuracy on every candidate retain prompt"
    )
    retain_chance_accuracy: float = Field(
        title="Retain chance", description="Majority-answer baseline of the retain prompts"
    )
    mmlu_proxy_accuracy: float | None = Field(
        default=None,
        title="MMLU bio/med accuracy",
        description="Accuracy on the MMLU biology/medicine proxy of WMDP-bio (checked sample)",
    )
    meaningful: bool = Field(
        default=False,
        title="Meaningful",
        description="Forget-set base accuracy is above chance (so there is knowledge to unlearn)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    n_forget_facts: int = Field(default=0, title="Forget items", description="Known forget prompts evaluated")
    n_retain_facts: int = Field(default=0, title="Retain items", description="Known retain prompts evaluated")


@dataclass
class UnlearningBestMetrics(BaseMetrics):
    forget_accuracy_before: float = Field(
        title="Forget accuracy before", description="On the evaluated (known) forget prompts"
    )
    forget_accuracy_after: float = Field(
        title="Forget accuracy after", description="At the best intervention within the retain bound"
    )
    retain_accuracy_before: float = Field(
        title="Retain accuracy before", description="On the evaluated (known) retain prompts"
    )
    retain_accuracy_after: float = Field(title="Retain accuracy after", description="At the best intervention")
    n_features: int = Field(
        default=0, title="N features", description="Latents clamped at the best intervention (0: none within bound)"
    )
    multiplier: float = Field(default=0.0, title="Multiplier", description="Clamp strength at the best intervention")
    retain_threshold: float = Field(
        default=0.0, title="Retain threshold", description="Retain-frequency threshold at the best intervention"
    )


@dataclass
class UnlearningMetricCategories(BaseMetricCategories):
    unlearning: UnlearningMetrics = Field(
        title="Unlearning",
        description="1 - forget accuracy after / before (sae_bench)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    knowledge: UnlearningKnowledgeMetrics = Field(
        title="Knowledge", description="What the model knows of the forget and retain sets"
    )
    best_intervention: UnlearningBestMetrics = Field(
        title="Best intervention", description="The sweep entry giving the score"
    )


@dataclass
class UnlearningSweepDetail(BaseResultDetail):
    retain_threshold: float = Field(title="Retain threshold", description="")
    n_features: int = Field(title="N features", description="Latents requested")
    n_features_used: int = Field(title="N used", description="Latents available under the threshold (<= requested)")
    multiplier: float = Field(title="Multiplier", description="")
    forget_accuracy: float = Field(title="Forget accuracy", description="")
    retain_accuracy: float = Field(title="Retain accuracy", description="")
    within_retain_bound: bool = Field(title="Within bound", description="retain accuracy >= bound x base")


@dataclass(config=ConfigDict(title="Unlearning (abstopk-eval)"))
class UnlearningEvalOutput(BaseEvalOutput[UnlearningEvalConfig, UnlearningMetricCategories, UnlearningSweepDetail]):
    """Unlearning with SAE latents (sae_bench; Farrell et al., 2024): clamp the latents most specific to the forget
    set against their sign when they fire; the score is the forget accuracy drop at the best sweep entry whose
    retain accuracy stays within the bound. Offline: MMLU bio/med stands in for WMDP-bio, and where the model is
    near chance on it a fact domain it knows is the forget set (see eval_result_unstructured.forget_set)."""

    eval_config: UnlearningEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: UnlearningMetricCategories
    eval_result_details: list[UnlearningSweepDetail] = Field(
        default_factory=list, title="Sweep", description="One entry per (retain threshold, n features, multiplier)"
    )
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_UNLEARNING, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, corpus, package versions"
    )
