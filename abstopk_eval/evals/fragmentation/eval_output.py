"""Output schema of the fragmentation evaluation."""

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

from abstopk_eval.evals.fragmentation.eval_config import FragmentationEvalConfig

EVAL_TYPE_ID_FRAGMENTATION = "fragmentation"


@dataclass
class AntiparallelMetrics(BaseMetrics):
    n_antiparallel_pairs: int = Field(
        title="Antiparallel pairs",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Unordered atom pairs with effective cosine < -threshold",
    )
    frac_atoms_in_antiparallel_pair: float = Field(
        title="Atoms with an antiparallel partner",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Fraction of scored atoms in at least one such pair",
    )
    mean_most_negative_cos: float = Field(
        title="Mean most negative cosine",
        description="Mean over scored atoms of the effective cosine to the most opposed other atom",
    )
    n_parallel_pairs: int = Field(
        title="Parallel pairs",
        description="Pairs with cosine > threshold (duplicates; always 0 for "
        "signed SAEs, whose pairs with |cos| > threshold count as antiparallel)",
    )
    n_axis_duplicate_pairs: int = Field(
        title="Axis-duplicate pairs",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Pairs with |cos| > threshold, whatever their sign: comparable across signed and non-negative SAEs",
    )
    n_atoms_scored: int = Field(title="Atoms scored", description="Alive atoms (or all, with alive_only false)")
    n_alive: int = Field(
        default=0, title="Alive latents", description="Latents active (z != 0) at least once on held-out data"
    )
    frac_alive_in_axis_duplicate_pair: float = Field(
        default=0.0,
        title="Alive latents sharing an axis",
        json_schema_extra=DEFAULT_DISPLAY,
        description="Fraction of alive latents with another alive latent at |cos| > threshold (antiparallel or "
        "parallel): the same meaning for signed and non-negative SAEs, independent of dead latents",
    )
    axis_duplicate_pairs_per_alive: float = Field(
        default=0.0, title="Axis-duplicate pairs per alive latent", description="Among alive latents, at the threshold"
    )
    signed_latents: bool = Field(
        title="Signed latents", description="Whether the SAE's latents take both signs (AbsTopK family)"
    )


@dataclass
class FragmentationMetricCategories(BaseMetricCategories):
    antiparallel: AntiparallelMetrics = Field(
        title="Antiparallel atoms", description="Split bipolar axes in the decoder"
    )


@dataclass
class FragmentationResultDetail(BaseResultDetail):
    threshold: float = Field(title="Threshold", description="Pairs with effective cosine < -threshold")
    n_antiparallel_pairs: int = Field(title="Antiparallel pairs", description="Count at this threshold")
    frac_atoms_in_antiparallel_pair: float = Field(
        title="Atoms with a partner", description="Fraction at this threshold"
    )


@dataclass(config=ConfigDict(title="Fragmentation (abstopk-eval)"))
class FragmentationEvalOutput(
    BaseEvalOutput[FragmentationEvalConfig, FragmentationMetricCategories, FragmentationResultDetail]
):
    """How many decoder atoms come in nearly antiparallel pairs, i.e. one bipolar axis split into two latents."""

    eval_config: FragmentationEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: FragmentationMetricCategories
    eval_result_details: list[FragmentationResultDetail] = Field(default_factory=list, title="Per threshold")
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_FRAGMENTATION, title="Eval Type ID", description="The type of the evaluation"
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, title="Provenance", description="model, layer, variant, k, seed, versions"
    )
