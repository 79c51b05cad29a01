"""Configuration of the core evaluation (sae_bench-style pydantic dataclass)."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig


@dataclass
class CoreEvalConfig(BaseEvalConfig):
    model_name: str = Field(title="Model", description="Model key in abstopk_eval's registry")
    layer: int = Field(title="Layer", description="Residual stream after this block")
    hook_name: str = Field(title="Hook", description="TransformerLens-style hook name of the activations")
    dataset: str = Field(title="Dataset", description="Held-out text the metrics are measured on")
    context_size: int = Field(title="Context size", description="Tokens per packed sequence (BOS first)")
    n_ce_tokens: int = Field(title="CE tokens", description="Tokens whose next-token loss and KL are measured")
    n_sparsity_tokens: int = Field(title="Sparsity tokens", description="Held-out activations for reconstruction and sparsity")
    exclude_bos: bool = Field(default=True, title="Exclude BOS",
                              description="BOS positions keep the original activation when splicing and are left out of every statistic")
    llm_dtype: str = Field(default="float32", title="LLM dtype", description="dtype of the language model")
