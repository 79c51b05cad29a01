"""A model's shapes without its weights: from a local config.json (or the local HF cache), else published values.

`--dry-run` estimates cost from these; nothing here downloads or loads weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abstopk_eval.models.registry import ModelSpec


@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    vocab_size: int
    d_mlp: int
    n_params: int
    """All parameters (embeddings counted once when tied)."""
    tied_embeddings: bool
    source: str
    """Where the numbers come from (a config file, or the model card's published config)."""

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2)

    @property
    def params_per_block(self) -> float:
        """Parameters of one decoder block (what a forward pass multiplies each token by, per block)."""
        return max(self.n_params - self.embedding_params, 0) / self.n_layers

    def forward_params(self, up_to_layer: int | None = None) -> float:
        """Parameters a token meets in a forward pass: blocks 0..L (activations at layer L stop there), or all
        blocks plus the LM head (None: a full pass that computes logits)."""
        if up_to_layer is not None:
            return self.params_per_block * (up_to_layer + 1)
        return self.params_per_block * self.n_layers + self.vocab_size * self.d_model


PUBLISHED: dict[str, ModelShape] = {
    "qwen3-4b": ModelShape(2560, 36, 151936, 9728, 4_022_468_096, True, "published config of Qwen/Qwen3-4B"),
    "gemma-2-2b": ModelShape(2304, 26, 256000, 9216, 2_614_341_888, True, "published config of google/gemma-2-2b"),
    "gpt2": ModelShape(768, 12, 50257, 3072, 124_439_808, True, "published config of openai-community/gpt2"),
    "pythia-70m": ModelShape(
        512, 6, 50304, 2048, 70_426_624, False, "published config of EleutherAI/pythia-70m-deduped"
    ),
    "gemma-3-270m": ModelShape(640, 18, 262144, 2048, 268_098_176, True, "published config of google/gemma-3-270m"),
    "smollm2-135m-instruct": ModelShape(
        576, 30, 49152, 1536, 134_515_008, True, "published config of HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}
"""Shapes from the models' published config.json (parameter counts from their model cards / safetensors index)."""


def _estimated_params(cfg: dict[str, Any], d: int, n_layers: int, vocab: int, d_mlp: int, tied: bool) -> int:
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or max(d // 64, 1))
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or d // heads)
    attention = d * heads * head_dim * 2 + d * kv * head_dim * 2
    gated = "hidden_act" in cfg and cfg.get("model_type") not in ("gpt2", "gpt_neox")
    mlp = (3 if gated else 2) * d * d_mlp
    return n_layers * (attention + mlp) + vocab * d * (1 if tied else 2)


def shape_from_config(cfg: dict[str, Any], source: str) -> ModelShape:
    """Shapes from a config.json dict (text config of multimodal configs); parameters estimated from the shapes."""
    cfg = cfg.get("text_config") or cfg
    d = int(cfg.get("hidden_size") or cfg["n_embd"])
    n_layers = int(cfg.get("num_hidden_layers") or cfg["n_layer"])
    vocab = int(cfg["vocab_size"])
    d_mlp = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d)
    tied = bool(cfg.get("tie_word_embeddings", True))
    return ModelShape(d, n_layers, vocab, d_mlp, _estimated_params(cfg, d, n_layers, vocab, d_mlp, tied), tied, source)


def _hub_cache_config(hf_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hf_id, "config.json")
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def model_shape(spec: ModelSpec, model_path: str | Path | None = None) -> ModelShape:
    """The shapes of `spec`'s model: `model_path`'s config.json, the local HF cache's, or the published ones; last,
    the registry's d_model and layer count with the rest unknown (0)."""
    candidates = [Path(model_path).expanduser() / "config.json"] if model_path is not None else []
    if model_path is None and spec.source == "hub":
        cached = _hub_cache_config(spec.hf_id)
        candidates += [cached] if cached is not None else []
    for path in candidates:
        try:
            return shape_from_config(json.loads(path.read_text()), f"{path}")
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if spec.key in PUBLISHED:
        return PUBLISHED[spec.key]
    return ModelShape(spec.d_model, spec.n_layers, 0, 0, 0, True, "registry (d_model, layers only)")
