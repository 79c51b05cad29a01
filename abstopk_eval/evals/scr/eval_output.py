"""Output schema of SCR: sae_bench's SCR metric categories and per-pair details, plus provenance."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalOutput
from sae_bench.evals.scr_and_tpp.eval_output import EVAL_TYPE_ID_SCR, ScrMetricCategories, ScrResultDetail

from abstopk_eval.evals.scr.eval_config import ScrEvalConfig


@dataclass(config=ConfigDict(title="SCR (abstopk-eval)"))
class ScrEvalOutput(BaseEvalOutput[ScrEvalConfig, ScrMetricCategories, ScrResultDetail]):
    """Spurious correlation removal: ablating the SAE latents tied to a spurious attribute should make a probe
    trained on spuriously correlated data classify the target label like a probe trained on balanced data."""

    eval_config: ScrEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: ScrMetricCategories
    eval_result_details: list[ScrResultDetail] = Field(
        default_factory=list, title="Per-pair results", description="One entry per column-1 class pair"
    )
    eval_type_id: str = Field(default=EVAL_TYPE_ID_SCR, title="Eval Type ID", description="The type of the evaluation")
    dataset_cards: list[dict[str, Any]] = Field(
        default_factory=list,
        title="Dataset cards",
        description="Source, license, derivation and counts of the dataset used",
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, corpus, package versions"
    )
