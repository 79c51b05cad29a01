"""Configuration of the core evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from abstopk_eval.errors import UserError
from abstopk_eval.evals.common import ModelEvalConfig

CORE_SOURCES = ("offline", "pile")


@dataclass
class CoreEvalConfig(ModelEvalConfig):
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("dataset_source",)
    """Left out of the result identity while at their default (`options.config_identity`)."""

    FILLED_BY_RUN: ClassVar[tuple[str, ...]] = ("dataset", "context_size", "n_ce_tokens", "n_sparsity_tokens")
    """Measured by the run (recorded here), not options."""

    dataset_source: str = Field(
        default="offline",
        title="Dataset source",
        description="'offline': the held-out split of the run's corpus (--corpus); 'pile': the held-out split of "
        "the Pile (monology/pile-uncopyrighted, the paper's corpus), as many sequences of the same length",
    )
    dataset: str = Field(default="", title="Dataset", description="Held-out text the metrics are measured on")
    context_size: int = Field(default=0, title="Context size", description="Tokens per packed sequence (BOS first)")
    n_ce_tokens: int = Field(
        default=0, title="CE tokens", description="Tokens whose next-token loss and KL are measured"
    )
    n_sparsity_tokens: int = Field(
        default=0, title="Sparsity tokens", description="Held-out activations for reconstruction and sparsity"
    )
    exclude_bos: bool = Field(
        default=True,
        title="Exclude BOS",
        description="BOS positions keep the original activation when splicing and are left out of every statistic "
        "(the sae_bench zero-ablation zeroes them; its BOS-kept twin keeps them)",
    )
    n_bootstrap: int = Field(
        default=1000,
        ge=100,
        title="Bootstrap resamples",
        description="Resamples of held-out sequences (CE, KL) and of sequence-long row blocks "
        "(nMSE, FVU) for the 95% intervals",
    )
    bootstrap_seed: int = Field(
        default=0,
        title="Bootstrap seed",
        description="Same seed for every SAE, so intervals of different SAEs share resamples (paired)",
    )
    inference: Literal["threshold", "batch"] = Field(
        default="threshold",
        title="Inference rule of batch-level SAEs",
        description="threshold: the checkpoint's per-latent threshold (calibrated to L0 = k); batch: the paper "
        "code's batch top-(k*B) selection over the rows encoded together (`evals/core/inference.py`). Other "
        "variants are unaffected",
    )
    inference_k: list[int] = Field(
        default_factory=list,
        title="Inference k sweep",
        description="Also score every SAE whose inference takes a k (topk, abstopk; batch-level ones under "
        "inference=batch) with k replaced by each of these, weights unchanged (the paper's Appendix D sweep)",
    )

    def __post_init__(self) -> None:
        if any(k < 1 for k in self.inference_k):
            raise ValueError("inference_k values must be >= 1")
        if self.dataset_source not in CORE_SOURCES:
            raise UserError(f"unknown core dataset_source {self.dataset_source!r}; known: {', '.join(CORE_SOURCES)}")

    def needs_hub(self) -> list[str]:
        """The Pile, unless a local copy is there (checked before any work)."""
        if self.dataset_source != "pile":
            return []
        from abstopk_eval.data.canonical import PILE, local_dir

        return [] if local_dir(*PILE[:2]) is not None else [f"core.dataset_source=pile ({PILE[0]})"]
