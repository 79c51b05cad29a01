"""Configuration of the bidirectional (Figure 1) study."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.common import ModelEvalConfig


@dataclass
class BidirectionalEvalConfig(ModelEvalConfig):
    axes: list[str] = Field(
        default_factory=list, title="Axes", description="Bipolar axes of abstopk_eval.data.bipolar_pairs (empty = all)"
    )
    contexts: list[str] = Field(
        default_factory=lambda: ["context", "alone"],
        title="Contexts",
        description="'context': minimal sentence pairs; 'alone': the bare word after the start token",
    )
    min_instances: int = Field(
        default=2, title="Minimum instances", description="An axis with fewer kept pairs in a context is skipped there"
    )
    min_share: float = Field(
        default=0.1,
        title="Minimum bidirectional share",
        description="An axis counts as held by one signed latent only when its bidirectional share is at least "
        "this (besides its interval lying above the control's): distinguishable from chance is not enough",
    )
    n_bootstrap: int = Field(
        default=1000, title="Bootstrap resamples", description="Resamples of the pairs for the 95% intervals"
    )
    seed: int = Field(
        default=0, title="Seed", description="Seeds the shuffled-pole control's swaps and the bootstrap resamples"
    )
