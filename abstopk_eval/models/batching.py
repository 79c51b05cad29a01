"""Batches of token-id sequences for language-model passes: the pad-id rule, padding, grouping by length.

Padded positions are always masked (attention mask, and position ids that count only real tokens, see
`ModelAdapter`), so neither the pad id nor the padding side changes what a real position computes; batches
group sequences of similar length only to spend less compute on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def pad_token_id_of(tokenizer: Any) -> int:
    """The id that fills padded positions: the tokenizer's pad, else its EOS, else its BOS, else 0.

    Padding is masked, so the id only matters where it is still seen: `generate` fills finished rows with it
    and decoding drops it only if it is a special token, and pooling excludes special ids. Hence the
    tokenizer's own pad first, then EOS (Hugging Face's `generate` convention), then BOS, and 0 (a real token
    in most vocabularies) only for a tokenizer without any of them.
    """
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, (list, tuple)):  # some configs list several EOS ids
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, *, side: str) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) `[B, W]` (long) of `seqs` padded on the `side` ("left" or "right") to the
    longest length W (at least 1). Left padding puts every row's last token in the last column."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    width = max(1, max((len(s) for s in seqs), default=0))
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        n = len(seq)
        if n:
            cols = slice(width - n, width) if side == "left" else slice(0, n)
            ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, cols] = 1
    return ids, mask


def length_batches(
    lengths: Sequence[int],
    max_rows: int | None = None,
    *,
    max_tokens: int | None = None,
    longest_first: bool = False,
) -> list[list[int]]:
    """Indices `0..len(lengths)-1`, each exactly once, grouped into batches of similar length.

    Indices are sorted by length (shortest first, or longest first), ties by index, and cut greedily into
    batches of at most `max_rows` rows and at most `max_tokens` padded tokens (rows x the longest length,
    counted as at least 1); a single sequence longer than `max_tokens` gets a batch of its own.
    """
    if max_rows is None and max_tokens is None:
        raise ValueError("length_batches needs max_rows or max_tokens")
    if (max_rows is not None and max_rows < 1) or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"batch bounds must be positive (max_rows={max_rows}, max_tokens={max_tokens})")
    sign = -1 if longest_first else 1
    order = sorted(range(len(lengths)), key=lambda i: (sign * lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        grown = max(width, lengths[i], 1)
        full_rows = max_rows is not None and len(current) + 1 > max_rows
        full_tokens = max_tokens is not None and grown * (len(current) + 1) > max_tokens
        if current and (full_rows or full_tokens):
            groups.append(current)
            current, grown = [], max(lengths[i], 1)
        current.append(i)
        width = grown
    if current:
        groups.append(current)
    return groups
