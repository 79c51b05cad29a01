"""Configuration of the sparse-probing evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.probes import ClassProbingConfig


@dataclass
class SparseProbingEvalConfig(ClassProbingConfig):
    dataset_names: list[str] = Field(
        default_factory=lambda: ["sentiment", "language", "code", "topic"],
        title="Datasets",
        description="Labelled datasets (abstopk_eval.data.labelled names; with dataset_source='sae_bench', "
        "the matching sae_bench hub datasets or sae_bench names)",
    )
    k_values: list[int] = Field(
        default_factory=lambda: [1, 2, 5, 10, 20, 50],
        title="K values",
        description="Numbers of latents (or residual channels) the sparse probes use",
    )
    probe_C: float = Field(
        default=1.0,
        title="Probe C",
        description="Inverse L2 strength of the logistic regression (on standardised features)",
    )
    probe_max_iter: int = Field(default=1000, title="Probe max iterations", description="lbfgs iterations")
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of each task's test texts for the 95% intervals of the top-k accuracies",
    )
    probe_all_latents: bool = Field(
        default=False,
        title="Probe on all latents",
        description="Also fit a probe on every latent (sae_test_accuracy; slow for wide SAEs)",
    )
