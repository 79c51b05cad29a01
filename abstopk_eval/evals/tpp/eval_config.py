"""Configuration of the TPP evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.probes import AttributionProbeConfig, ClassProbingConfig


@dataclass
class TppEvalConfig(ClassProbingConfig, AttributionProbeConfig):
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("n_bootstrap",)
    """Left out of the result identity while at their default (`options.config_identity`)."""

    dataset_names: list[str] = Field(
        default_factory=lambda: ["language", "topic"],
        title="Datasets",
        description="Multi-class labelled datasets (abstopk_eval.data.labelled names; with dataset_source='sae_bench', "
        "the matching sae_bench hub datasets or sae_bench names)",
    )
    n_values: list[int] = Field(
        default_factory=lambda: [2, 5, 10, 20, 50], title="N values", description="Numbers of latents ablated per class"
    )
    selection_rule: str = Field(
        default="oriented",
        title="Selection rule",
        description="'oriented': sae_bench's clamped mean difference applied to sign-oriented latents "
        "(`evals/selection.py`), which keeps a latent that carries the class in its sign; results written under the "
        "earlier mean-|z| gate have no such field and are therefore not current",
    )
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of the test texts (seeded by random_seed, the same for every SAE, so two SAEs' samples "
        "pair) for the 95% intervals of the TPP metrics",
    )

    def __post_init__(self) -> None:
        if self.selection_rule != "oriented":
            raise ValueError("selection_rule must be 'oriented' (the only rule implemented)")
