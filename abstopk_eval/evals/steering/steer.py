"""Steering interventions on the residual stream, and the batched passes that score them.

An `Intervention` maps a block's output hidden state h to h + delta(h):

* ``add``: delta = v (Difference-in-Means activation addition, x' = x + alpha d), at layer L;
* ``ablate``: delta = -(h . u) u with unit u (directional ablation, x' = x - u u^T x), at every layer;
* ``clamp``: delta = (c - z_j(h)) W_dec[j] (paper eq. 22: the SAE latent j is set to c and the SAE error term is
  kept, so nothing else in the activation changes), at layer L;
* ``sae_add``: delta = c W_dec[j] (adding c times latent j's decoder row), at layer L.

Every intervention acts on every position except padding and the special positions of `models.sequence_start`
(each sequence's first real token, its attention-sink activation, and for GPT-2 / Pythia every `<|endoftext|>`:
SAEs never see them in training, as the caches exclude them), in the prompt pass and at every generated token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from abstopk_eval.errors import UserError
from abstopk_eval.models.batching import length_batches, pad_sequences
from abstopk_eval.models.sequence_start import SequenceStart, sequence_start_of

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
    """Token ids of each chat-templated message, starting as `models.sequence_start` says (a template that writes
    the start token itself, as Gemma's and SmolLM2's do, does not get it twice)."""
    start = sequence_start_of(tokenizer)
    out = []
    for message in user_messages:
        ids = start.prepend(tokenizer.encode(chat_text(tokenizer, message), add_special_tokens=False))
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[len(ids) - max_tokens :]  # keep the end: the question and the assistant turn
        out.append(ids)
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad: int, start: SequenceStart) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, skip) with left padding; skip marks padding and the special positions of
    `start` (each first real token, see `SequenceStart.special_mask`), where no intervention applies."""
    ids, mask = pad_sequences(seqs, pad, side="left")
    return ids, mask, ~mask.bool() | start.special_mask(ids, mask)


# ---------------------------------------------------------------------------------------------- passes


@torch.no_grad()
def last_position_activations(
    adapter: Any, seqs: Sequence[Sequence[int]], layer: int, pad: int, batch_size: int
) -> Tensor:
    """Residual stream after block `layer` at the last prompt position of each sequence, [N, d] float32."""
    out: list[Tensor | None] = [None] * len(seqs)
    for idx in length_batches([len(s) for s in seqs], batch_size):
        ids, mask, _ = left_pad([seqs[i] for i in idx], pad, adapter.sequence_start)
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
    for idx in length_batches([len(s) for s in seqs], batch_size):
        ids, mask, skip = left_pad([seqs[i] for i in idx], pad, adapter.sequence_start)
        with intervention.applied(adapter, skip):
            out = adapter.generate(
                ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        for row, i in enumerate(idx):
            texts[i] = tok.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True).strip()
    return texts  # type: ignore[return-value]


class FixedBatches:
    """Fixed left-padded batches whose clean residual after block L is computed once.

    An intervention that acts only at layer L changes nothing before block L+1, so its logits are those of blocks
    L+1.. run on `resid + delta(resid)` (`ModelAdapter.logits_from_residual`, which checks this once per layer
    against a full forward pass with that residual spliced in, and uses full passes where they differ). Other
    interventions (directional ablation at every layer) always run full passes.
    """

    def __init__(self, adapter: Any, layer: int, batches: list[tuple[Tensor, Tensor | None, Tensor]], last_only: bool):
        self.adapter, self.layer, self.last_only = adapter, layer, last_only
        self.batches = batches
        """(input_ids, attention_mask or None, skip) per batch."""
        self.resid = [adapter.activations(ids, layer, attention_mask=mask) for ids, mask, _ in batches]
        self._resume: bool | None = None

    @property
    def resume(self) -> bool | None:
        """Whether layer-L interventions run only blocks L+1..: the adapter's verified choice (None until the first
        such pass) unless set here (True: always, unchecked; False: full passes)."""
        return self._resume if self._resume is not None else self.adapter.resumes_from_residual(self.layer)

    @resume.setter
    def resume(self, value: bool | None) -> None:
        self._resume = value

    def _shaped(self, logits: Tensor) -> Tensor:
        """float32 [B, 1, V] (last position) or [B, T, V]."""
        return logits.float()[:, None] if self.last_only else logits.float()

    def _full(self, b: int, iv: Intervention) -> Tensor:
        ids, mask, skip = self.batches[b]
        with iv.applied(self.adapter, skip):
            return self._shaped(self.adapter.logits(ids, mask, last_only=self.last_only))

    def _from_residual(self, b: int, iv: Intervention, resume: bool | None) -> Tensor:
        ids, mask, skip = self.batches[b]
        resid = self.resid[b]
        steered = iv.hidden_fn(skip)(resid) if iv.kind != "none" else resid
        logits = self.adapter.logits_from_residual(
            steered, self.layer, ids, mask, last_only=self.last_only, resume=resume
        )
        return self._shaped(logits)

    def _resumed(self, b: int, iv: Intervention) -> Tensor:
        return self._from_residual(b, iv, resume=True)

    def logits(self, iv: Intervention) -> Iterator[tuple[int, Tensor]]:
        """(batch index, logits [B, T or 1, V] float32) under `iv`, batch by batch."""
        fast = iv.kind == "none" or tuple(iv.layers) == (self.layer,)
        for b in range(len(self.batches)):
            if fast and self.resume is not False:
                yield b, self._from_residual(b, iv, resume=self._resume)
            else:
                yield b, self._full(b, iv)


def mmlu_batches(
    adapter: Any, seqs: Sequence[Sequence[int]], layer: int, *, pad: int, batch_size: int
) -> tuple[FixedBatches, list[list[int]]]:
    """Fixed batches of MMLU prompts (last-position logits) and the prompt index of each row."""
    index = length_batches([len(s) for s in seqs], batch_size)
    batches = [left_pad([seqs[i] for i in idx], pad, adapter.sequence_start) for idx in index]
    return FixedBatches(adapter, layer, batches, last_only=True), index


def ce_batches(adapter: Any, tokens: Tensor, layer: int, *, batch_size: int) -> FixedBatches:
    """Fixed batches of packed text rows [N, T] (the special positions of `models.sequence_start` keep their
    activation)."""
    special = adapter.sequence_start
    batches = []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        batches.append((batch, None, special.special_mask(batch)))
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
