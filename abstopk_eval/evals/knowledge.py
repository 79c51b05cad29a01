"""Shared machinery of the knowledge-based evaluations (RAVEL, unlearning): short prompts, next-token answers.

* Prompts are tokenised without special tokens and the start token of `models.sequence_start` is prepended (as
  in the packed training rows), then
  batched by length and left-padded (`abstopk_eval.models.batching`), so the answer is read from the last
  position of every row.
* An answer is its value's first token after the template, in the value's given, lower or capitalised case
  (``value_token_ids``); a prediction is the greedy next token (SAEBench RAVEL's first-token criterion).
* `PromptRunner` runs the model only as far as it must: the residual stream after block L (later blocks do
  not run), and last-position logits from an edited layer-L residual that run only blocks L+1..
  (`ModelAdapter.logits_from_residual`, checked once against a full forward pass with the residual spliced
  in). Logits are computed for the last position only.
* The clean passes (`logits_and_residual`, `residual`, `logits` without an edit) do not depend on an SAE: where
  the adapter has a pass cache (`models.pass_cache`) they are stored on disk, keyed by the prompt batch's token
  ids and mask and the layer, so a later run or `compare` of a new SAE runs only the blocks after L.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from abstopk_eval.data.facts import Template
from abstopk_eval.models.pass_cache import cached_pass, tensor_digest


def encode(tokenizer: Any, text: str, bos: int | None) -> list[int]:
    """`text`'s ids without special tokens, after `bos`: the start token of `models.sequence_start`
    (`ModelAdapter.bos_token_id`; None: nothing is prepended)."""
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


@dataclass
class PromptRunner:
    """The adapter's passes bound to layer L for left-padded prompt batches: float32 last-position logits
    (computed for that position only) and layer-L residuals."""

    adapter: Any
    layer: int

    @property
    def resume(self) -> bool:
        """Whether logits from a residual run only blocks L+1.. (True until the adapter's check finds otherwise)."""
        return self.adapter.resumes_from_residual(self.layer) is not False

    def _cached(
        self, kind: str, ids: Tensor, mask: Tensor, build: Callable[[], dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """`build()`'s tensors for this prompt batch, from the adapter's pass cache when it has one."""
        got = cached_pass(self.adapter, kind, self.layer, {"ids": tensor_digest(ids, mask)}, build)
        return {name: t.to(self.adapter.device) for name, t in got.items()}

    def logits_and_residual(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Last-position logits [B, V] of a clean pass and the residual [B, T, D] after block L (one pass)."""

        def build() -> dict[str, Tensor]:
            captured: list[Tensor] = []
            with self.adapter.replace_output(self.layer, lambda h: captured.append(h.detach().float()) or h):
                logits = self.adapter.logits(ids, mask, last_only=True).float()
            return {"logits": logits, "resid": captured[0]}

        got = self._cached("prompt-clean", ids, mask, build)
        return got["logits"], got["resid"]

    def residual(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Residual stream [B, T, D] after block L (float32, no grad)."""
        build = lambda: {"resid": self.adapter.activations(ids, self.layer, attention_mask=mask)}  # noqa: E731
        return self._cached("prompt-resid", ids, mask, build)["resid"]

    def logits(self, ids: Tensor, mask: Tensor, fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Last-position logits [B, V] of a full forward pass (block L's output replaced by fn(h) if given)."""
        if fn is None:
            build = lambda: {"logits": self.adapter.logits(ids, mask, last_only=True).float()}  # noqa: E731
            return self._cached("prompt-logits", ids, mask, build)["logits"]
        with self.adapter.replace_output(self.layer, fn):
            return self.adapter.logits(ids, mask, last_only=True).float()

    def logits_from_residual(self, resid: Tensor, ids: Tensor, mask: Tensor, grad: bool = False) -> Tensor:
        """Last-position logits [B, V] when block L outputs `resid` [B, T, D] (differentiable if grad)."""
        return self.adapter.logits_from_residual(resid, self.layer, ids, mask, last_only=True, grad=grad).float()
