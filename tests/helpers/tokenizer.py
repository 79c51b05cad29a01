"""A tiny byte-level BPE tokenizer built offline (no hub), for fast tests."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders decompose language-model activations into latents.",
    "def add(x, y):\n    return x + y\n\n",
    "Wikipedia is a free online encyclopedia written by volunteers.",
]


@functools.cache
def _backend() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT * 4, trainer)
    return tok


def tiny_tokenizer(*, eos: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE (~320 tokens) with ``<bos>``=2 and ``<eos>``=1 (``eos=False``: no EOS token)."""
    kwargs = {"bos_token": "<bos>", "pad_token": "<pad>"}
    if eos:
        kwargs["eos_token"] = "<eos>"
    return PreTrainedTokenizerFast(tokenizer_object=_backend(), **kwargs)
