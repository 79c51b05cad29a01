"""The one tiny tokenizer of the tests: a real `PreTrainedTokenizerFast` built offline with the `tokenizers` library.

`tiny_tokenizer(start)` reproduces how each model family begins a sequence, which is what the harness has to get
right (BOS excluded from activations, packing, prompt encoding):

- ``"bos"`` (Llama, Gemma): a distinct ``<bos>`` that `tokenizer("x")` prepends.
- ``"eos"`` (GPT-2, Pythia): ``<|endoftext|>`` is both BOS and EOS, and `tokenizer("x")` prepends nothing.
- ``"none"`` (Qwen): no BOS at all (`bos_token_id is None`), EOS ``<|im_end|>``, padding ``<|endoftext|>``.

The default vocabulary is character level with 64 ids: 0-2 the kind's special tokens (0 is always padding; 1 is
BOS where there is one), 3.. the characters of `ALPHABET` (`3 + ALPHABET.index(c)`). Every other ASCII character
is folded onto the alphabet (`ALPHABET[ord(c) % 61]`) and anything beyond ASCII reads as "?", so any text encodes
and the ids are those of the character tokenizer the tiny models' tests were written against. Padding is always
there (real GPT-2 / Pythia tokenizers have none; the harness's fallback for that is not what these tests check).
"""

from __future__ import annotations

import functools
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedTokenizerFast

SequenceStart = Literal["bos", "eos", "none"]
SEQUENCE_STARTS: tuple[SequenceStart, ...] = ("bos", "eos", "none")

ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()ABCDEFGHIJKLM"
"""The 61 characters with their own id (3 + index)."""
VOCAB = 3 + len(ALPHABET)
"""Size of the character vocabulary (64): the tiny models' `vocab_size`."""

SPECIAL_TOKENS: dict[SequenceStart, tuple[str, str, str]] = {
    "bos": ("<pad>", "<bos>", "<eos>"),
    "eos": ("<|padding|>", "<|endoftext|>", "<|unused|>"),
    "none": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
}
"""Ids 0, 1, 2 of each kind's vocabulary (a custom `core` must start with the same three)."""

_ROLES: dict[SequenceStart, dict[str, str]] = {
    "bos": {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"},
    "eos": {"pad_token": "<|padding|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "none": {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
}


def fold(char: str) -> str:
    """The alphabet character that `char` encodes as."""
    if char in ALPHABET:
        return char
    return ALPHABET[ord(char) % len(ALPHABET)] if ord(char) < 128 else "?"


@functools.cache
def _character_core(start: SequenceStart) -> str:
    """The character-level `tokenizers` model for `start`, serialised (each tokenizer gets its own copy)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS[start])}
    vocab.update({c: 3 + i for i, c in enumerate(ALPHABET)})
    # a BPE without merges is a character tokenizer (and twice as fast as one piece per character)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    folds = [normalizers.Replace(chr(i), fold(chr(i))) for i in range(128) if chr(i) not in ALPHABET]
    core.normalizer = normalizers.Sequence([*folds, normalizers.Replace(Regex(r"[^\x00-\x7f]"), "?")])
    core.decoder = decoders.Fuse()
    return core.to_str()


def tiny_tokenizer(
    start: SequenceStart = "bos", *, eos: bool = True, padding_side: str = "right", core: Tokenizer | None = None
) -> PreTrainedTokenizerFast:
    """A tokenizer that starts sequences the way `start` says (see the module docstring).

    eos=False: the tokenizer names no EOS token (the harness then separates documents with a blank line).
    core: another `tokenizers.Tokenizer` (e.g. a BPE trained on the test's words) whose ids 0-2 are
    `SPECIAL_TOKENS[start]`; default the character vocabulary.
    """
    if start not in SPECIAL_TOKENS:
        raise ValueError(f"start must be one of {SEQUENCE_STARTS}, not {start!r}")
    backend = Tokenizer.from_str(core.to_str() if core is not None else _character_core(start))
    for i, token in enumerate(SPECIAL_TOKENS[start]):
        if backend.token_to_id(token) != i:
            raise ValueError(f"the tokenizer's id {i} must be {token!r} for start={start!r}")
    if start == "bos":  # Llama / Gemma: BOS before every sequence when special tokens are added
        bos = SPECIAL_TOKENS["bos"][1]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
        )
    roles = dict(_ROLES[start])
    if not eos:
        roles.pop("eos_token")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[t for t in SPECIAL_TOKENS[start] if t not in roles.values()],
        **roles,
    )
