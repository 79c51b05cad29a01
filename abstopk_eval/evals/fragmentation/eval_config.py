"""Configuration of the fragmentation evaluation."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.common import ModelEvalConfig


@dataclass
class FragmentationEvalConfig(ModelEvalConfig):
    threshold: float = Field(
        default=0.7,
        title="Antiparallel threshold",
        description="A pair of atoms splits one axis when their effective cosine is below -threshold "
        "(angle above ~134 degrees for 0.7; random atoms in d=640 have |cos| ~ 0.04)",
    )
    extra_thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.9],
        title="Other thresholds",
        description="Pair counts are also reported at these thresholds",
    )
    alive_only: bool = Field(
        default=True,
        title="Alive atoms only",
        description="Score only latents active (z != 0) on the held-out activations; dead atoms keep "
        "their random initial directions and say nothing about what was learned",
    )
    histogram_bins: int = Field(
        default=24, title="Histogram bins", description="Bins of the most-negative-cosine histogram over [-1, 0.2]"
    )
