"""Configuration of the bidirectional (Figure 1) case study."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.common import ModelEvalConfig


@dataclass
class BidirectionalEvalConfig(ModelEvalConfig):
    axes: list[str] = Field(
        default_factory=list, title="Axes", description="Bipolar axes of abstopk_eval.data.bipolar_pairs (empty = all)"
    )
    min_instances: int = Field(
        default=2, title="Minimum instances", description="Axes with fewer kept minimal pairs are skipped"
    )
    bipolar_fraction: float = Field(
        default=0.5,
        title="Bipolar fraction",
        description="The top latent is bidirectional when it takes opposite nonzero signs on the two "
        "sides in at least this fraction of the axis's pairs",
    )
    split_ratio: float = Field(
        default=0.5,
        title="Split ratio",
        description="Otherwise the axis is split when another latent responds to the other pole with at "
        "least this fraction of the top latent's contrast",
    )
