"""Tiny random-weight causal LMs for fast tests (no downloads), one builder per supported architecture family.

Each builder `tiny_<family>(seed=0, *, tokenizer=None, **config)` returns `(model, tokenizer)`: a real
`transformers` model class in eval mode, seeded (so results are reproducible) and tiny (3 layers, d_model 32), with
the family's kind of tokenizer (`FAMILY_START`, see `tests.helpers.tokenizer`) unless one is given; the vocabulary
size and the special ids in the model's config and generation config are the tokenizer's, and `config` overrides
any config field. `save_tiny_model` writes any of them as a local `save_pretrained` folder
(what `--model-path` loads); `TINY` is the model spec that runs use with such a folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abstopk_eval.models.registry import ModelSpec
from tests.helpers.tokenizer import SequenceStart, tiny_tokenizer

D_MODEL = 32
N_LAYERS = 3

FAMILY_START: dict[str, SequenceStart] = {
    "llama": "bos",
    "gemma2": "bos",
    "gemma3": "bos",
    "qwen3": "none",
    "gpt2": "eos",
    "neox": "eos",
}
"""How each family's real tokenizer starts a sequence: the default tokenizer of its builder."""

TINY = ModelSpec(
    key="tiny-test",
    source="hub",
    hf_id="local/tiny-llama",
    n_layers=N_LAYERS,
    d_model=D_MODEL,
    context_size=32,
    paper_k=4,
)
"""The registered `tiny-test` model: runs use it with `--model tiny-test --model-path <a tiny model folder>`."""


def tiny_gguf_spec(key: str) -> ModelSpec:
    """A registry entry of a packaged GGUF model (3 layers, d_model 32) for tests that fake its dequantisation."""
    return ModelSpec(
        key=key,
        source="gguf_package",
        hf_id="test/tiny",
        n_layers=3,
        d_model=32,
        context_size=16,
        paper_k=4,
        package="tiny-test-gguf",
        extra={"gguf_file": "tiny-Q4_K_M.gguf"},
    )


Builder = Callable[..., tuple[nn.Module, Any]]


def _build(family: str, make: Callable[..., nn.Module], base: dict[str, Any], seed: int, tokenizer: Any, config: dict):
    """`make(**base, special ids of the tokenizer, **config)` under `torch.manual_seed(seed)`, in eval mode."""
    tok = tokenizer if tokenizer is not None else tiny_tokenizer(FAMILY_START[family])
    special = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    torch.manual_seed(seed)
    model = make(**{**base, **special, **config}).eval()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, special[name])
    return model, tok


def tiny_llama(seed: int = 0, *, tokenizer: Any = None, **config: Any) -> tuple[nn.Module, Any]:
    """LlamaForCausalLM: 3 layers, d_model 32, GQA (4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = dict(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return _build("llama", lambda **c: LlamaForCausalLM(LlamaConfig(**c)), base, seed, tokenizer, config)


def tiny_gemma2(seed: int = 0, *, tokenizer: Any = None, **config: Any) -> tuple[nn.Module, Any]:
    """Gemma2ForCausalLM: 3 layers, d_model 32, sliding / global / sliding attention, logit soft-capping."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    base = dict(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )
    return _build("gemma2", lambda **c: Gemma2ForCausalLM(Gemma2Config(**c)), base, seed, tokenizer, config)


def tiny_gemma3(seed: int = 0, *, tokenizer: Any = None, **config: Any) -> tuple[nn.Module, Any]:
    """Gemma3ForCausalLM (text-only): 3 layers, d_model 32, a sliding-window layer and a global one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    base = dict(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )
    return _build("gemma3", lambda **c: Gemma3ForCausalLM(Gemma3TextConfig(**c)), base, seed, tokenizer, config)


def tiny_qwen3(seed: int = 0, *, tokenizer: Any = None, **config: Any) -> tuple[nn.Module, Any]:
    """Qwen3ForCausalLM: 3 layers, d_model 32, GQA with per-head q/k RMSNorm, tied embeddings (like the small Qwen3
    models); its tokenizer has no BOS by default."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    base = dict(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return _build("qwen3", lambda **c: Qwen3ForCausalLM(Qwen3Config(**c)), base, seed, tokenizer, config)


def tiny_gpt2(seed: int = 0, *, tokenizer: Any = None, **config: Any) -> tuple[nn.Module, Any]:
    """GPT2LMHeadModel: 3 layers, d_model 32; `<|endoftext|>` is BOS and EOS by default."""
    from transformers import GPT2Config, GPT2LMHeadModel

    base = dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=128)
    return _build("gpt2", lambda **c: GPT2LMHeadModel(GPT2Config(**c)), base, seed, tokenizer, config)


def tiny_neox(seed: int = 0, *, tokenizer: Any = None, **config: Any) -> tuple[nn.Module, Any]:
    """GPTNeoXForCausalLM (Pythia family): 3 layers, d_model 32, parallel attention + MLP; `<|endoftext|>` is BOS
    and EOS by default."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    base = dict(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=128,
        rotary_pct=0.25,
    )
    return _build("neox", lambda **c: GPTNeoXForCausalLM(GPTNeoXConfig(**c)), base, seed, tokenizer, config)


TINY_BUILDERS: dict[str, Builder] = {
    "llama": tiny_llama,
    "gemma2": tiny_gemma2,
    "gemma3": tiny_gemma3,
    "qwen3": tiny_qwen3,
    "gpt2": tiny_gpt2,
    "neox": tiny_neox,
}
assert set(TINY_BUILDERS) == set(FAMILY_START)


def save_tiny_model(model: nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """`save_pretrained` the model and its tokenizer into `folder`: a directory `--model-path` (and
    `AutoModelForCausalLM` / `AutoTokenizer`) can load."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class TinyModelFolders(Mapping[str, Path]):
    """family -> saved folder of `TINY_BUILDERS[family]()`, each written on first use under `root`."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._saved: dict[str, Path] = {}

    def __getitem__(self, family: str) -> Path:
        if family not in self._saved:
            builder = TINY_BUILDERS[family]  # KeyError for an unknown family, as a Mapping should
            self._saved[family] = save_tiny_model(*builder(), self._root / family)
        return self._saved[family]

    def __iter__(self) -> Iterator[str]:
        return iter(TINY_BUILDERS)

    def __len__(self) -> int:
        return len(TINY_BUILDERS)


def tiny_batch(tokenizer: Any, texts: Sequence[str] = ("hello world", "sparse autoencoders!")) -> dict[str, Any]:
    """A small right-padded batch (`input_ids`, `attention_mask` tensors) of `texts`."""
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


@contextmanager
def blocks_run(adapter: Any) -> Iterator[Counter]:
    """Counts the forward calls of each decoder block of a `ModelAdapter` (block index -> calls) while active."""
    calls: Counter = Counter()
    hooks = [b.register_forward_hook(lambda *_a, i=i: calls.update([i])) for i, b in enumerate(adapter.layers())]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()
