"""How every token sequence of a model begins, and which positions are special: one rule per tokenizer.

`sequence_start_of(tokenizer)` is the only place this is decided; packing (`data.corpus`), activation caches
(`data.activation_cache`), core's splice and zero-ablation, pooled evaluations, absorption, steering, RAVEL and
unlearning prompts all ask it (through `ModelAdapter.sequence_start` where they hold an adapter), so a model's
SAEs are trained, spliced and probed on sequences that start the same way and skip the same positions.

Three kinds of tokenizer:

- ``"bos"`` (Llama, Gemma, SmolLM2): a BOS distinct from EOS. It is prepended to every sequence, whether or not the
  tokenizer adds it itself (SmolLM2's does not), as sae_lens / TransformerLens do for these models.
- ``"bos_eq_eos"`` (GPT-2, Pythia): BOS is EOS (``<|endoftext|>``) and the tokenizer adds nothing. It is
  prepended all the same: TransformerLens (which sae_lens trains and SAEBench evaluates through) prepends it for
  these models (`default_prepend_bos`), so published SAEs for them saw it.
- ``"none"`` (Qwen): no BOS. Nothing is prepended: TransformerLens sets `default_prepend_bos=False` for the Qwen
  families, so sae_lens and SAEBench run Qwen on the bare text, and inventing a start token (e.g. EOS) would
  feed the model a sequence it was not trained on.

Special positions (left out of activation caches and every statistic, kept at their original activation when an
SAE is spliced in and in core's special-positions-kept zero-ablation, though core's sae_bench zero-ablation zeroes
every position; no steering intervention applies there): the **first real position
of every sequence**, and, for ``"bos_eq_eos"``, every position holding the start token (`special_ids`). The first
position is an attention sink with a norm one to two orders of magnitude above the rest whether or not it is a BOS
(it is the first text token for Qwen), so SAEs never train on it. For ``"bos_eq_eos"`` the start token also
separates packed documents and so begins each of them as it begins the row; those positions are excluded too (as
before this rule, and as SAEBench's masks do). A distinct BOS occurs only first in packed rows and prompts; where
a chat template reuses it later (SmolLM2's ``<|im_start|>`` turn markers) it is an ordinary turn token. Pooled
evaluations further exclude EOS, padding and BOS ids wherever they occur (`pooling_excluded_ids`, SAEBench's
`mask_bos_pad_eos_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

StartKind = Literal["bos", "bos_eq_eos", "none"]


@dataclass(frozen=True)
class SequenceStart:
    """The sequence-start rule of one tokenizer (see the module docstring)."""

    kind: StartKind
    start_token_id: int | None
    """Prepended to every packed row and prompt; None: nothing is prepended."""
    special_ids: frozenset[int]
    """Ids whose every position is special: the start token where it is also EOS (``"bos_eq_eos"``), else none."""
    bos_token_id: int | None
    """The tokenizer's BOS (excluded from pooled means wherever it occurs)."""
    eos_token_id: int | None
    """The tokenizer's EOS (document separator in packed rows; excluded from pooled means)."""
    pad_token_id: int | None
    """The tokenizer's own pad id, if it has one (excluded from pooled means)."""

    def prepend(self, ids: Sequence[int]) -> list[int]:
        """`ids` with the start token in front (not doubled when `ids` already begins with it, e.g. a chat
        template that writes BOS itself)."""
        ids = [int(i) for i in ids]
        if self.start_token_id is None or (ids and ids[0] == self.start_token_id):
            return ids
        return [self.start_token_id, *ids]

    def special_mask(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Bool mask (shape of `tokens` [..., T]) of the special positions: the first real position of each row
        (the first position where `attention_mask` is 1, else column 0) and every position holding a `special_ids`
        id."""
        tokens = torch.as_tensor(tokens)
        if attention_mask is None:
            first = torch.zeros_like(tokens, dtype=torch.bool)
            first[..., 0] = True
        else:
            real = attention_mask.to(tokens.device).bool()
            first = real & (real.long().cumsum(-1) == 1)
        if not self.special_ids:
            return first
        ids = torch.tensor(sorted(self.special_ids), dtype=tokens.dtype, device=tokens.device)
        return first | torch.isin(tokens, ids)

    @property
    def pooling_excluded_ids(self) -> frozenset[int]:
        """Ids never pooled (besides the special positions and padding): BOS, EOS and pad (SAEBench's mask)."""
        extra = {i for i in (self.bos_token_id, self.eos_token_id, self.pad_token_id) if i is not None}
        return self.special_ids | extra

    def record(self) -> dict[str, Any]:
        """JSON form (activation-cache metadata, provenance)."""
        return {
            "kind": self.kind,
            "start_token_id": self.start_token_id,
            "special_ids": sorted(self.special_ids),
            "first_position_special": True,
        }


def _single_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):  # some configs list several EOS ids
        value = value[0] if value else None
    return None if value is None else int(value)


def sequence_start_of(tokenizer: Any) -> SequenceStart:
    """The one sequence-start rule for `tokenizer` (reads only its BOS, EOS and pad ids; the model's config is
    not consulted, since packing and prompts see only the tokenizer)."""
    bos = _single_id(getattr(tokenizer, "bos_token_id", None))
    eos = _single_id(getattr(tokenizer, "eos_token_id", None))
    pad = _single_id(getattr(tokenizer, "pad_token_id", None))
    if bos is None:
        return SequenceStart("none", None, frozenset(), None, eos, pad)
    if bos == eos:
        return SequenceStart("bos_eq_eos", bos, frozenset({bos}), bos, eos, pad)
    return SequenceStart("bos", bos, frozenset(), bos, eos, pad)
