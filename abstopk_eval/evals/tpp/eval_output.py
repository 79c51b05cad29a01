"""Output schema of TPP: sae_bench's TPP metric categories and per-dataset details, plus provenance."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalOutput
from sae_bench.evals.scr_and_tpp.eval_output import EVAL_TYPE_ID_TPP, TppMetricCategories, TppResultDetail

from abstopk_eval.evals.tpp.eval_config import TppEvalConfig


@dataclass(config=ConfigDict(title="TPP (abstopk-eval)"))
class TppEvalOutput(BaseEvalOutput[TppEvalConfig, TppMetricCategories, TppResultDetail]):
    """Targeted probe perturbation: ablating the latents selected for class i should hurt the class-i probe
    and leave the other classes' probes alone (S_TPP = mean drop on i=j minus mean drop on i!=j)."""

    eval_config: TppEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: TppMetricCategories
    eval_result_details: list[TppResultDetail] = Field(
        default_factory=list, title="Per-dataset results", description="Mean over the dataset's classes"
    )
    eval_type_id: str = Field(default=EVAL_TYPE_ID_TPP, title="Eval Type ID", description="The type of the evaluation")
    dataset_cards: list[dict[str, Any]] = Field(
        default_factory=list,
        title="Dataset cards",
        description="Source, license, derivation and counts of every dataset used",
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, corpus, package versions"
    )
