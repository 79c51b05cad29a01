"""Output schema of sparse probing: sae_bench's metric categories and per-dataset details, plus provenance."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalOutput
from sae_bench.evals.sparse_probing.eval_output import (
    EVAL_TYPE_ID_SPARSE_PROBING,
    SparseProbingMetricCategories,
    SparseProbingResultDetail,
)

from abstopk_eval.evals.sparse_probing.eval_config import SparseProbingEvalConfig


@dataclass(config=ConfigDict(title="Sparse probing (abstopk-eval)"))
class SparseProbingEvalOutput(
    BaseEvalOutput[SparseProbingEvalConfig, SparseProbingMetricCategories, SparseProbingResultDetail]
):
    """Logistic-regression probes on the k SAE latents whose mean pooled value differs most (in magnitude)
    between a class and the rest, against probes on the model's pooled residual stream; offline datasets."""

    eval_config: SparseProbingEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: SparseProbingMetricCategories
    eval_result_details: list[SparseProbingResultDetail] = Field(
        default_factory=list, title="Per-dataset results", description="Mean over the dataset's one-vs-rest tasks"
    )
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_SPARSE_PROBING, title="Eval Type ID", description="The type of the evaluation"
    )
    dataset_cards: list[dict[str, Any]] = Field(
        default_factory=list,
        title="Dataset cards",
        description="Source, license, derivation and counts of every dataset used",
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, corpus, package versions"
    )
