"""Tiny random-weight causal LMs for fast tests (no downloads), one per supported architecture family.

Each builder returns `(model, tokenizer)`: the model is a real HF model class in eval mode, seeded, so
results are reproducible; the tokenizer is a `TinyTokenizer` (see its docstring), enough for code that
needs `bos/eos/pad_token_id`, `encode`, `__call__` and `decode`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

VOCAB = 64
D_MODEL = 32
N_LAYERS = 3
ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()ABCDEFGHIJKLM"
"""The 61 characters with their own id (3 + index); other characters share ids by `ord` modulo 61."""
assert len(ALPHABET) == VOCAB - 3


class TinyTokenizer:
    """Character-level stand-in for a HF tokenizer.

    ids: 0 = pad, 1 = bos, 2 = eos, 3.. = characters (`3 + ALPHABET.index(c)`, others `3 + ord(c) % 61`).
    `encode(text)` prepends BOS (like Gemma's tokenizer) unless `add_special_tokens=False`.
    `__call__(texts, return_tensors="pt")` left- or right-pads (`padding_side`) a batch and returns
    a dict with `input_ids` and `attention_mask` as LongTensors.
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2

    def __init__(self, vocab_size: int = VOCAB, padding_side: str = "right") -> None:
        self.vocab_size = vocab_size
        self.padding_side = padding_side
        self.pad_token = "<pad>"
        self.bos_token = "<bos>"
        self.eos_token = "<eos>"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        n = self.vocab_size - 3
        ids = [3 + (ALPHABET.index(c) if c in ALPHABET[:n] else ord(c) % n) for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        special = {
            self.pad_token_id: self.pad_token,
            self.bos_token_id: self.bos_token,
            self.eos_token_id: self.eos_token,
        }
        out = []
        for i in ids:
            if i in special:
                if not skip_special_tokens:
                    out.append(special[i])
            else:
                out.append(ALPHABET[i - 3] if i - 3 < len(ALPHABET) else "?")
        return "".join(out)

    def __call__(
        self, texts: str | Sequence[str], return_tensors: str | None = "pt", add_special_tokens: bool = True, **_: Any
    ) -> dict[str, Any]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        encoded = [self.encode(t, add_special_tokens=add_special_tokens) for t in batch]
        width = max(len(e) for e in encoded)
        ids, mask = [], []
        for e in encoded:
            pad = [self.pad_token_id] * (width - len(e))
            ones, zeros = [1] * len(e), [0] * len(pad)
            if self.padding_side == "left":
                ids.append(pad + e)
                mask.append(zeros + ones)
            else:
                ids.append(e + pad)
                mask.append(ones + zeros)
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        return {"input_ids": ids, "attention_mask": mask}


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    model.generation_config.pad_token_id = TinyTokenizer.pad_token_id
    model.generation_config.eos_token_id = TinyTokenizer.eos_token_id
    model.generation_config.bos_token_id = TinyTokenizer.bos_token_id
    return model


def _build(make: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, TinyTokenizer]:
    torch.manual_seed(seed)
    return _finish(make()), TinyTokenizer()


_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_llama(seed: int = 0) -> tuple[nn.Module, TinyTokenizer]:
    """LlamaForCausalLM: 3 layers, d_model 32, GQA (4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **_SPECIAL,
    )
    return _build(lambda: LlamaForCausalLM(config), seed)


def tiny_gemma3(seed: int = 0) -> tuple[nn.Module, TinyTokenizer]:
    """Gemma3ForCausalLM (text-only): 3 layers, d_model 32, a sliding-window layer and a global one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        **_SPECIAL,
    )
    return _build(lambda: Gemma3ForCausalLM(config), seed)


def tiny_gpt2(seed: int = 0) -> tuple[nn.Module, TinyTokenizer]:
    """GPT2LMHeadModel: 3 layers, d_model 32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=128, **_SPECIAL)
    return _build(lambda: GPT2LMHeadModel(config), seed)


def tiny_neox(seed: int = 0) -> tuple[nn.Module, TinyTokenizer]:
    """GPTNeoXForCausalLM (Pythia family): 3 layers, d_model 32, parallel attention + MLP."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=128,
        rotary_pct=0.25,
        **_SPECIAL,
    )
    return _build(lambda: GPTNeoXForCausalLM(config), seed)


TINY_BUILDERS: dict[str, Callable[..., tuple[nn.Module, TinyTokenizer]]] = {
    "llama": tiny_llama,
    "gemma3": tiny_gemma3,
    "gpt2": tiny_gpt2,
    "neox": tiny_neox,
}


def tiny_batch(
    tokenizer: TinyTokenizer | None = None, texts: Sequence[str] = ("hello world", "sparse autoencoders!")
) -> dict[str, Any]:
    """A small padded batch of token ids from `texts`."""
    return (tokenizer or TinyTokenizer())(list(texts))


def tiny_hf_tokenizer() -> Any:
    """A real (savable) `PreTrainedTokenizerFast` over the same 64-id character vocabulary as `TinyTokenizer`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for i, c in enumerate(ALPHABET):
        vocab[c] = 3 + i
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def save_tiny_pretrained(model: nn.Module, folder: Any) -> None:
    """`save_pretrained` `model` plus `tiny_hf_tokenizer()` into `folder` (a loadable model directory)."""
    model.save_pretrained(folder)
    tiny_hf_tokenizer().save_pretrained(folder)
