"""Output schema of the absorption evaluation: sae_bench's first-letter schema plus 1 - absorption."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.absorption.eval_output import AbsorptionMeanMetrics, AbsorptionResultDetail
from sae_bench.evals.base_eval_output import DEFAULT_DISPLAY, BaseEvalOutput, BaseMetricCategories

from abstopk_eval.evals.absorption.eval_config import AbsorptionEvalConfig

EVAL_TYPE_ID_ABSORPTION = "absorption_first_letter"  # sae_bench's id: the metrics are the same


@dataclass
class SignedAbsorptionMeanMetrics(AbsorptionMeanMetrics):
    """sae_bench's mean metrics (same names and rules), computed sign-correctly, plus 1 - absorption."""

    one_minus_absorption: float = Field(
        title="1 - Absorption",
        description="1 - mean_absorption_fraction_score (higher is better). The AbsTopK paper (and SAEBench's "
        "leaderboard) report absorption this way",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    num_letters_evaluated: int = Field(
        title="Letters evaluated",
        description="Letters whose ground-truth probe has test F1 > min_GT_probe_f1 and at least one true positive",
    )


@dataclass
class AbsorptionMetricCategories(BaseMetricCategories):
    mean: SignedAbsorptionMeanMetrics = Field(
        title="Mean", description="Mean metrics over the evaluated letters", json_schema_extra=DEFAULT_DISPLAY
    )


@dataclass
class SignedAbsorptionResultDetail(AbsorptionResultDetail):
    """sae_bench's per-letter detail plus the main latents and the probe quality behind it."""

    split_feats: list[int] = Field(
        default_factory=list,
        title="Main latents",
        description="The letter's main latents (k-sparse probing with the F1-jump rule)",
    )
    f1_probe: float = Field(
        default=0.0, title="Probe F1", description="Test F1 of the ground-truth probe on model activations"
    )
    f1_sparse_sae: float = Field(
        default=0.0, title="k-sparse F1", description="Test F1 of the k-sparse latent probe on the main latents"
    )


@dataclass(config=ConfigDict(title="Absorption (abstopk-eval)"))
class AbsorptionEvalOutput(
    BaseEvalOutput[AbsorptionEvalConfig, AbsorptionMetricCategories, SignedAbsorptionResultDetail]
):
    """Feature absorption on the first-letter task (SAEBench methodology), correct for signed latents."""

    eval_config: AbsorptionEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: AbsorptionMetricCategories
    eval_result_details: list[SignedAbsorptionResultDetail] = Field(
        default_factory=list, title="Per-Letter Absorption Results", description="One entry per evaluated first letter"
    )
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_ABSORPTION, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        title="Provenance",
        description="model, layer, variant, k, seed, word source, package versions",
    )
