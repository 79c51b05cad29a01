"""Configuration of the SCR evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.probes import AttributionProbeConfig, LabelledTextConfig


@dataclass
class ScrEvalConfig(LabelledTextConfig, AttributionProbeConfig):
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("n_bootstrap",)
    """Left out of the result identity while at their default (`options.config_identity`)."""

    dataset_name: str = Field(
        default="domain-sentiment",
        title="Dataset",
        description="Labelled dataset with a class label (column 1) and a binary attribute (column 2)",
    )
    spurious_attribute: str | None = Field(
        default=None,
        title="Attribute",
        description="Attribute used as column 2 (default: the dataset's only attribute)",
    )
    column1_pairs: list[list[str]] | None = Field(
        default=None,
        title="Column 1 pairs",
        description="Class pairs (A, B) of the label; each gives one SCR run (default: disjoint consecutive pairs "
        "of the dataset's classes; for sae_bench's amazon dataset, sae_bench's pairs)",
    )
    column2_values: list[str] | None = Field(
        default=None,
        title="Column 2 values",
        description="Attribute values (pos, neg): the biased set is (A, pos) vs (B, neg) "
        "(default: a value named pos*/positive first, else the dataset's order)",
    )
    random_seed: int = Field(
        default=42,
        title="Random seed",
        description="Sampling of the quadrants; also seeds the bootstrap resamples of the test texts",
    )
    train_set_size: int = Field(
        default=600,
        title="Train set size",
        description="Texts per probe training set; a quadrant holds a quarter (as in sae_bench)",
    )
    test_set_size: int = Field(
        default=200, title="Test set size", description="Texts per probe test set (quarter per quadrant)"
    )
    min_per_quadrant: int = Field(
        default=10,
        title="Minimum per quadrant",
        description="Fewer training texts than this in a (class, attribute) quadrant is an error",
    )
    n_values: list[int] = Field(
        default_factory=lambda: [2, 5, 10, 20, 50], title="N values", description="Numbers of latents ablated"
    )
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of the test texts (seeded by random_seed, the same for every SAE, so two SAEs' samples "
        "pair) for the 95% intervals of the SCR metrics",
    )
