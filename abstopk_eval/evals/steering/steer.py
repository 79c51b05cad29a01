"""Steering interventions on the residual stream, and the batched passes that score them.

An `Intervention` maps a block's output hidden state h to h + delta(h):

* ``add``: delta = v (Difference-in-Means activation addition, x' = x + alpha d), at layer L;
* ``ablate``: delta = -(h . u) u with unit u (directional ablation, x' = x - u u^T x), at every layer;
* ``clamp``: delta = (c - z_j(h)) W_dec[j] (paper eq. 22: the SAE latent j is set to c and the SAE error term is
  kept, so nothing else in the activation changes), at layer L;
* ``sae_add``: delta = c W_dec[j] (adding c times latent j's decoder row), at layer L.

Every intervention acts on every position except padding and the first real token of each sequence (its
attention-sink activation, which SAEs never see in training, as BOS is excluded from their caches), in the
prompt pass and at every generated token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from abstopk_eval.errors import UserError

log = logging.getLogger("abstopk_eval.steering")

KINDS = ("none", "add", "ablate", "clamp", "sae_add")


@dataclass(frozen=True)
class Intervention:
    kind: str = "none"
    layers: tuple[int, ...] = ()
    vector: Tensor | None = None
    """add: the added vector; ablate: the direction (normalised here)."""
    sae: Any = None
    latent: int | None = None
    value: float | None = None
    """clamp: the value c latent j is set to; sae_add: the multiple c of W_dec[j] that is added."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown intervention {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind != "none" and not self.layers:
            raise UserError(f"intervention {self.kind!r} needs at least one layer")
        if self.kind in ("add", "ablate") and self.vector is None:
            raise UserError(f"intervention {self.kind!r} needs a vector")
        if self.kind in ("clamp", "sae_add") and (self.sae is None or self.latent is None or self.value is None):
            raise UserError(f"intervention {self.kind!r} needs an SAE, a latent and a value")

    def delta(self, h: Tensor) -> Tensor:
        """The change this intervention makes to hidden states `h` [..., d] (float32)."""
        h = h.float()
        if self.kind == "none":
            return torch.zeros_like(h)
        if self.kind == "add":
            return self.vector.to(h).expand_as(h)
        if self.kind == "ablate":
            u = self.vector.to(h)
            u = u / u.norm()
            return -(h @ u)[..., None] * u
        row = self.sae.W_dec[self.latent].to(h)
        if self.kind == "sae_add":
            return (self.value * row).expand_as(h)
        z = self.sae.encode(h)[..., self.latent]
        return (self.value - z)[..., None] * row

    def hidden_fn(self, skip: Tensor | None):
        """Replacement fn for `ModelAdapter.replace_output`. `skip` [B, T0] marks positions of the full-length
        (prompt) pass left unchanged; shorter passes (generated tokens, one at a time) are changed everywhere."""

        def fn(hidden: Tensor) -> Tensor:
            delta = self.delta(hidden)
            if skip is not None and hidden.shape[:2] == skip.shape:
                delta = delta.masked_fill(skip.to(hidden.device)[..., None], 0.0)
            return (hidden.float() + delta).to(hidden.dtype)

        return fn

    @contextmanager
    def applied(self, adapter: Any, skip: Tensor | None) -> Iterator[None]:
        ctx = nullcontext() if self.kind == "none" else adapter.replace_output(list(self.layers), self.hidden_fn(skip))
        with ctx:
            yield


NO_INTERVENTION = Intervention()


# ---------------------------------------------------------------------------------------------- prompts


def chat_text(tokenizer: Any, user_message: str) -> str:
    """The model's chat template around one user message (generation prompt added); a plain fallback for
    tokenizers without a template."""
    if getattr(tokenizer, "chat_template", None) and hasattr(tokenizer, "apply_chat_template"):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
        )
    return f"User: {user_message}\nAssistant:"


def encode_chat(tokenizer: Any, user_messages: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each chat-templated message (the template supplies its own special tokens)."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    out = []
    for message in user_messages:
        ids = list(tokenizer.encode(chat_text(tokenizer, message), add_special_tokens=not templated))
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[len(ids) - max_tokens :]  # keep the end: the question and the assistant turn
        out.append(ids)
    return out


def pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return 0 if pad is None else int(pad)


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, skip) with left padding; skip marks padding and each first real token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    skip = torch.ones((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
            skip[i, width - len(s) + 1 :] = False
    return ids, mask, skip


def _batches_by_length(seqs: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (less padding); every index exactly once."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------------------------------- passes


@torch.no_grad()
def last_position_activations(
    adapter: Any, seqs: Sequence[Sequence[int]], layer: int, pad: int, batch_size: int
) -> Tensor:
    """Residual stream after block `layer` at the last prompt position of each sequence, [N, d] float32."""
    out: list[Tensor | None] = [None] * len(seqs)
    for idx in _batches_by_length(seqs, batch_size):
        ids, mask, _ = left_pad([seqs[i] for i in idx], pad)
        acts = adapter.activations(ids, layer, attention_mask=mask)
        for row, i in enumerate(idx):
            out[i] = acts[row, -1].float().cpu()
    return torch.stack(out)  # type: ignore[arg-type]


@torch.no_grad()
def generate(
    adapter: Any,
    seqs: Sequence[Sequence[int]],
    intervention: Intervention,
    *,
    pad: int,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) under `intervention`."""
    texts: list[str | None] = [None] * len(seqs)
    tok = adapter.tokenizer
    for idx in _batches_by_length(seqs, batch_size):
        ids, mask, skip = left_pad([seqs[i] for i in idx], pad)
        with intervention.applied(adapter, skip):
            out = adapter.generate(
                ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        for row, i in enumerate(idx):
            texts[i] = tok.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True).strip()
    return texts  # type: ignore[return-value]


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder block: returns its input, or a fixed hidden state (the block whose output is given)."""

    def __init__(self, output: Tensor | None = None):
        super().__init__()
        self.output = output

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states if self.output is None else self.output.to(hidden_states.dtype)


RESUME_RTOL = 1e-4


class FixedBatches:
    """Fixed left-padded batches whose clean residual after block L is computed once.

    An intervention that acts only at layer L changes nothing before block L+1, so its logits are those of blocks
    L+1.. run on `resid + delta(resid)`: blocks 0..L are swapped for pass-throughs (the last one returning the
    steered residual). This is checked against a full forward pass the first time; where they differ (an
    architecture whose blocks cannot be skipped this way) full passes are used. Other interventions (directional
    ablation at every layer) always run full passes.
    """

    def __init__(self, adapter: Any, layer: int, batches: list[tuple[Tensor, Tensor | None, Tensor]], last_only: bool):
        self.adapter, self.layer, self.last_only = adapter, layer, last_only
        self.batches = batches
        """(input_ids, attention_mask or None, skip) per batch."""
        self.resid = [adapter.activations(ids, layer, attention_mask=mask) for ids, mask, _ in batches]
        self.resume: bool | None = None  # None: not yet checked

    def _logits(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        dev = self.adapter.device
        kwargs: dict[str, Any] = {"input_ids": ids.to(dev), "use_cache": False}
        if mask is not None:
            kwargs["attention_mask"] = mask.to(dev)
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0).to(dev)
        with torch.no_grad():
            if self.last_only:
                try:  # the LM head on the last position only
                    return self.adapter.model(**kwargs, logits_to_keep=1).logits[:, -1:].float()
                except TypeError:
                    pass
            out = self.adapter.model(**kwargs).logits.float()
        return out[:, -1:] if self.last_only else out

    @contextmanager
    def _blocks_skipped(self, resid: Tensor) -> Iterator[None]:
        layers = self.adapter.layers()
        saved = [layers[i] for i in range(self.layer + 1)]
        try:
            for i in range(self.layer):
                layers[i] = _PassThrough()
            layers[self.layer] = _PassThrough(resid.to(self.adapter.device))
            yield
        finally:
            for i, block in enumerate(saved):
                layers[i] = block

    def _full(self, b: int, iv: Intervention) -> Tensor:
        ids, mask, skip = self.batches[b]
        with iv.applied(self.adapter, skip):
            return self._logits(ids, mask)

    def _resumed(self, b: int, iv: Intervention) -> Tensor:
        ids, mask, skip = self.batches[b]
        resid = self.resid[b]
        steered = iv.hidden_fn(skip)(resid) if iv.kind != "none" else resid
        with self._blocks_skipped(steered):
            return self._logits(ids, mask)

    def logits(self, iv: Intervention) -> Iterator[tuple[int, Tensor]]:
        """(batch index, logits [B, T or 1, V] float32) under `iv`, batch by batch."""
        fast = iv.kind == "none" or tuple(iv.layers) == (self.layer,)
        for b in range(len(self.batches)):
            if fast and self.resume is None:
                full = self._full(b, iv)
                try:
                    quick = self._resumed(b, iv)
                    err = float((quick - full).abs().max()) / max(float(full.abs().max()), 1e-6)
                except Exception as exc:
                    err = float("inf")
                    log.warning("skipping blocks 0..%d failed (%s); using full forward passes", self.layer, exc)
                self.resume = err <= RESUME_RTOL
                if not self.resume:
                    log.warning(
                        "logits from the cached layer-%d residual differ from full ones (rel %.2g); "
                        "using full forward passes",
                        self.layer,
                        err,
                    )
                yield b, full
            elif fast and self.resume:
                yield b, self._resumed(b, iv)
            else:
                yield b, self._full(b, iv)


def mmlu_batches(
    adapter: Any, seqs: Sequence[Sequence[int]], layer: int, *, pad: int, batch_size: int
) -> tuple[FixedBatches, list[list[int]]]:
    """Fixed batches of MMLU prompts (last-position logits) and the prompt index of each row."""
    index = _batches_by_length(seqs, batch_size)
    batches = [left_pad([seqs[i] for i in idx], pad) for idx in index]
    return FixedBatches(adapter, layer, batches, last_only=True), index


def ce_batches(adapter: Any, tokens: Tensor, layer: int, *, batch_size: int) -> FixedBatches:
    """Fixed batches of packed text rows [N, T] (BOS positions keep their activation)."""
    bos = adapter.bos_token_id
    batches = []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        skip = batch == bos if bos is not None else torch.zeros_like(batch, dtype=torch.bool)
        skip[:, 0] = True
        batches.append((batch, None, skip))
    return FixedBatches(adapter, layer, batches, last_only=False)


@torch.no_grad()
def letter_predictions(
    fixed: FixedBatches, index: list[list[int]], letter_ids: Sequence[int], intervention: Intervention
) -> list[int]:
    """Index of the largest next-token logit among `letter_ids` after each prompt."""
    n = sum(len(idx) for idx in index)
    preds: list[int] = [0] * n
    letters = torch.tensor(list(letter_ids))
    for b, logits in fixed.logits(intervention):
        scores = logits[:, -1].cpu()[:, letters]
        for row, i in enumerate(index[b]):
            preds[i] = int(scores[row].argmax())
    return preds


@torch.no_grad()
def mean_ce(fixed: FixedBatches, intervention: Intervention) -> float:
    """Mean next-token cross-entropy of the text rows of `fixed` under `intervention`."""
    total, n = 0.0, 0
    for b, logits in fixed.logits(intervention):
        batch = fixed.batches[b][0]
        scores = logits[:, :-1]
        ce = torch.logsumexp(scores, -1) - scores.gather(-1, batch[:, 1:, None].to(scores.device)).squeeze(-1)
        total += float(ce.sum())
        n += ce.numel()
    return total / max(n, 1)


def letter_token_ids(tokenizer: Any, letters: Sequence[str]) -> list[int]:
    ids = []
    for letter in letters:
        enc = list(tokenizer.encode(letter, add_special_tokens=False))
        if len(enc) != 1:
            raise UserError(f"the tokenizer splits the answer letter {letter!r} into {len(enc)} tokens")
        ids.append(int(enc[0]))
    return ids
