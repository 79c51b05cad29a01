"""Shared machinery of the knowledge-based evaluations (RAVEL, unlearning): short prompts, next-token answers.

* Prompts are tokenised without special tokens and BOS is prepended (as in the packed training rows), then
  batched by length and left-padded, so the answer is read from the last position of every row.
* An answer is its value's first token after the template, in the value's given, lower or capitalised case
  (``value_token_ids``); a prediction is the greedy next token (SAEBench RAVEL's first-token criterion).
* `PromptRunner` runs the model only as far as it must: the residual stream after block L (later blocks do
  not run), and last-position logits from an edited layer-L residual that run only blocks L+1.. (blocks
  0..L are swapped for pass-throughs; checked once against a full forward pass with the residual spliced
  in, and replaced by that full pass when they differ). Logits are computed for the last position only.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from abstopk_eval.data.facts import Template

log = logging.getLogger("abstopk_eval")

RESUME_CHECK_RTOL = 1e-3
"""Relative max-abs difference of logits tolerated between the resumed and the full forward pass."""


def encode(tokenizer: Any, text: str, bos: int | None) -> list[int]:
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return ([bos] if bos is not None else []) + ids


_VALUE_TOKENS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], frozenset[int]]] = weakref.WeakKeyDictionary()


def value_token_ids(tokenizer: Any, template: Template, value: str) -> frozenset[int]:
    """First token of the value as it would follow the template, in its given, lower and capitalised case."""
    cache = _VALUE_TOKENS.setdefault(tokenizer, {})
    key = (template.answer_prefix, value)
    if key not in cache:
        cache[key] = _value_token_ids(tokenizer, template.answer_prefix, value)
    return cache[key]


def _value_token_ids(tokenizer: Any, prefix: str, value: str) -> frozenset[int]:
    out = set()
    for v in dict.fromkeys((value, value.lower(), value[:1].upper() + value[1:])):
        ids = tokenizer.encode(prefix + v, add_special_tokens=False)
        if ids:
            out.add(int(ids[0]))
    return frozenset(out)


def entity_last_position(tokenizer: Any, template: Template, entity: str, bos: int | None, ids: list[int]) -> int:
    """Index in `ids` (the encoded filled template) of the entity's last token."""
    prefix = encode(tokenizer, template.entity_prefix(entity), bos)
    if ids[: len(prefix)] == prefix:
        return len(prefix) - 1
    remainder = tokenizer.encode(template.text.split("%s", 1)[1], add_special_tokens=False)
    return len(ids) - len(remainder) - 1  # SAEBench's rule: count back over the template's remainder


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted), so little padding is needed."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_id_of(adapter: Any) -> int:
    tok = adapter.tokenizer
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            return int(value)
    return 0


@contextmanager
def _contiguous_head_input(model: nn.Module) -> Iterator[None]:
    """`logits_to_keep` hands the output head a strided [B, 1, D] view, which torch multiplies as a batched matmul
    against an expanded copy of the [V, D] head (seconds for Gemma's 262k vocabulary); a contiguous input takes
    the plain matmul (same values)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


class _PassThrough(nn.Module):
    """Stands in for a decoder block: returns its input, or a fixed tensor (the block whose output is given)."""

    def __init__(self, output: Tensor | None = None):
        super().__init__()
        self.output = output

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states if self.output is None else self.output.to(hidden_states.dtype)


@dataclass
class PromptRunner:
    """Last-position logits and layer-L residuals of left-padded prompt batches."""

    adapter: Any
    layer: int
    resume: bool = True
    """Run only blocks L+1.. from a given layer-L residual (verified on first use)."""
    _verified: bool = False

    def _kwargs(self, ids: Tensor, mask: Tensor) -> dict[str, Any]:
        dev = self.adapter.device
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return {
            "input_ids": ids.to(dev),
            "attention_mask": mask.to(dev),
            "position_ids": pos.to(dev),
            "use_cache": False,
        }

    def _last_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        kwargs = self._kwargs(ids, mask)
        with _contiguous_head_input(self.adapter.model):
            try:
                out = self.adapter.model(**kwargs, logits_to_keep=1)
            except TypeError:
                out = self.adapter.model(**kwargs)
        return out.logits[:, -1].float()

    def logits_and_residual(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Last-position logits [B, V] of a clean pass and the residual [B, T, D] after block L (one pass)."""
        captured: list[Tensor] = []
        with (
            torch.no_grad(),
            self.adapter.replace_output(self.layer, lambda h: captured.append(h.detach().float()) or h),
        ):
            logits = self._last_logits(ids, mask)
        return logits, captured[0]

    def residual(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Residual stream [B, T, D] after block L (float32, no grad)."""
        return self.adapter.activations(ids, self.layer, attention_mask=mask)

    def logits(self, ids: Tensor, mask: Tensor, fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Last-position logits [B, V] of a full forward pass (block L's output replaced by fn(h) if given)."""
        with torch.no_grad():
            if fn is None:
                return self._last_logits(ids, mask)
            with self.adapter.replace_output(self.layer, fn):
                return self._last_logits(ids, mask)

    @contextmanager
    def _blocks_skipped(self, resid: Tensor) -> Iterator[None]:
        layers = self.adapter.layers()
        saved = [layers[i] for i in range(self.layer + 1)]
        try:
            for i in range(self.layer):
                layers[i] = _PassThrough()
            layers[self.layer] = _PassThrough(resid)
            yield
        finally:
            for i, block in enumerate(saved):
                layers[i] = block

    def _resumed(self, resid: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        with self._blocks_skipped(resid.to(self.adapter.device)):
            return self._last_logits(ids, mask)

    def logits_from_residual(self, resid: Tensor, ids: Tensor, mask: Tensor, grad: bool = False) -> Tensor:
        """Last-position logits [B, V] when block L outputs `resid` [B, T, D] (differentiable if grad)."""
        if self.resume and not self._verified:
            with torch.no_grad():
                full = self.logits(ids, mask, fn=lambda h: resid.to(h.dtype))
                try:
                    fast = self._resumed(resid, ids, mask)
                    err = float((fast - full).abs().max()) / max(float(full.abs().max()), 1e-6)
                except Exception as exc:  # an architecture whose blocks cannot be skipped this way
                    err, fast = float("inf"), None
                    log.warning("resuming at block %d failed (%s); using full forward passes", self.layer + 1, exc)
            self._verified = True
            if err > RESUME_CHECK_RTOL:
                if fast is not None:
                    log.warning("resumed logits differ from full ones (rel %.2g); using full forward passes", err)
                self.resume = False
            if not grad:
                return full
        with torch.set_grad_enabled(grad):
            if self.resume:
                return self._resumed(resid, ids, mask)
            with self.adapter.replace_output(self.layer, lambda h: resid.to(h.dtype)):
                return self._last_logits(ids, mask)
