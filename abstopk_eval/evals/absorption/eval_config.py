"""Configuration of the feature-absorption evaluation: sae_bench's absorption config plus offline sizes."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig as SaeBenchAbsorptionEvalConfig


@dataclass
class AbsorptionEvalConfig(SaeBenchAbsorptionEvalConfig):
    """sae_bench's fields keep their names, meanings and defaults unless redefined below.

    `prompt_token_pos` is informational here: prompts are assembled from token ids, so the word's position is
    known exactly (the run records the position it had, counted from the end of a one-query prompt).
    `eval_k_sparse_probe_batch_size` is unused (all latents are computed at once).
    """

    FILLED_BY_RUN: ClassVar[tuple[str, ...]] = ("dataset", "prompt_token_pos")
    """Measured by the run (recorded here), not options."""
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("n_bootstrap", "bootstrap_seed")
    """Left out of the result identity while at their default (`options.config_identity`)."""

    layer: int = Field(default=-1, title="Layer", description="Residual stream after this block (filled from the run)")
    hook_name: str = Field(default="", title="Hook", description="TransformerLens-style hook name of the activations")
    dataset: str = Field(default="", title="Dataset", description="Where the words come from (filled from the run)")

    # redefined defaults
    min_feats_for_eval: int = Field(
        default=10,
        ge=1,
        title="Minimum features for evaluation",
        description="Fewer first-letter probes with test F1 > min_GT_probe_f1 than this is an error. sae_bench: 20 "
        "(for >= 2B models and their whole vocabulary); gemma-3-270m layer 9 with 6000 words reaches ~21",
    )
    # the latents of every probe word are always computed up front (they are small here)
    precalc_k_sparse_probe_sae_acts: bool = Field(
        default=True,
        title="Precalc SAE Acts when training k-sparse probes",
        description="Always true here: every SAE encodes all probe words once",
    )
    llm_batch_size: int = Field(
        default=4,
        title="LLM Batch Size",
        description="Packed prompt sequences per language-model forward pass (each holds queries_per_sequence words)",
    )

    # words
    n_words: int = Field(
        default=6000,
        ge=2,
        title="Words",
        description="At most this many single-token words, drawn (seeded) from those that pass the filter",
    )
    words: list[str] | None = Field(
        default=None,
        title="Explicit words",
        description="Use these words (each must be one token of the tokenizer, as its text, e.g. ' cat') instead of "
        "the tokenizer vocabulary; the filter still applies. For tests and small tokenizers",
    )
    require_leading_space: bool = Field(
        default=True,
        title="Leading space",
        description="Keep only word-initial tokens (' cat'); False also admits word-internal pieces like sae_bench",
    )
    lowercase_only: bool = Field(
        default=True,
        title="Lowercase",
        description="Keep only lowercase words; False also admits 'Cat' and 'CAT' like sae_bench",
    )
    min_word_letters: int = Field(
        default=2, ge=1, title="Minimum letters", description="Minimum number of letters of a word (sae_bench: 1)"
    )
    min_words: int = Field(
        default=100,
        ge=2,
        title="Minimum words",
        description="Fewer words passing the filter than this is an error (too few to train and test the probes)",
    )
    train_test_fraction: float = Field(
        default=0.8,
        gt=0.0,
        lt=1.0,
        title="Train fraction",
        description="Fraction of the words that train the probes; the rest give F1 scores and the probe's true "
        "positives",
    )

    # prompts
    max_icl_examples: int = Field(
        default=10,
        ge=0,
        title="ICL examples",
        description="In-context examples ('{word} has the first letter: X') before the first query of a sequence "
        "(sae_bench: 10), drawn from the same split without the sequence's own words",
    )
    queries_per_sequence: int = Field(
        default=16,
        ge=1,
        title="Queries per sequence",
        description="Words queried in one packed sequence: query j also sees the j-1 earlier queries, with their "
        "answers, as extra examples (its activation is read at its own token, before its answer). "
        "1 reproduces sae_bench's one-query prompts at ~8x the language-model cost",
    )

    # ground-truth probe on the language model's activations (sae_bench's train_and_save_probes settings)
    probe_num_epochs: int = Field(
        default=50, ge=1, title="Probe epochs", description="Epochs of the letter probe on model activations"
    )
    probe_batch_size: int = Field(
        default=64, ge=1, title="Probe batch size", description="Batch size of the letter probe"
    )
    probe_lr: float = Field(
        default=1e-2, gt=0.0, title="Probe learning rate", description="Adam learning rate of the letter probe"
    )
    probe_weight_decay: float = Field(
        default=1e-4, ge=0.0, title="Probe weight decay", description="Adam weight decay of the letter probe"
    )

    # absorption thresholds (module constants in sae_bench's feature_absorption.py)
    full_absorption_probe_cos_threshold: float = Field(
        default=0.025,
        title="Full absorption cos threshold",
        description="Minimum cosine between the probe and the top latent's contribution z_i W_dec[i] (full absorption)",
    )
    absorption_fraction_probe_cos_threshold: float = Field(
        default=0.1,
        title="Absorption fraction cos threshold",
        description="Minimum cosine between the probe and an absorbing latent's contribution z_i W_dec[i]",
    )
    probe_projection_proportion_threshold: float = Field(
        default=0.4,
        title="Projection proportion threshold",
        description="Absorbing latents must account for at least this fraction of the activation's probe projection",
    )
    absorption_fraction_max_absorbing_latents: int = Field(
        default=3,
        ge=1,
        title="Max absorbing latents",
        description="Absorbing latents counted per word (absorption fraction)",
    )
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of the probe's true-positive test words, stratified by first letter, for the 95% "
        "intervals of the absorption scores (latent selection fixed)",
    )
    bootstrap_seed: int = Field(
        default=0,
        title="Bootstrap seed",
        description="Same seed for every SAE, so the samples of different SAEs share resamples (paired)",
    )
