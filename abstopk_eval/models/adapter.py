"""Architecture-neutral access to a HF causal LM's residual stream: capture, splice, steer, resume, loss.

Layer `L` means the residual stream at the OUTPUT of decoder block `L` (0-indexed), i.e. TransformerLens
`blocks.L.hook_resid_post`. For `L < n_layers - 1` this equals HF `output_hidden_states[L + 1]`; for the
last block HF's final hidden state has the final norm applied, ours does not.

* Padded batches (see `abstopk_eval.models.batching`; pad id `ModelAdapter.pad_token_id`) run with their
  attention mask and position ids that count only real tokens, so padding changes no real position.
* `logits(..., last_only=True)` computes the LM head on the last position only (`logits_to_keep=1`).
* `logits_from_residual(resid, L, ...)` gives the logits when block L outputs `resid`, running only blocks
  L+1.. (blocks 0..L are swapped for pass-throughs, the last one returning `resid`). The first call per layer
  checks this against a full forward pass with `resid` spliced in, and full spliced passes are used from then
  on when they differ (an architecture whose blocks cannot be skipped this way); with a `pass_cache` the outcome
  of that check is remembered on disk for the model.
* `capturing_head()` records the output head's input and output (the final hidden state, the logits before any
  soft-capping); `linear_head()` gives its weight and bias (core's KL from `W^T p`, `evals/core/passes.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from abstopk_eval.errors import UserError
from abstopk_eval.models.batching import pad_token_id_of
from abstopk_eval.models.pass_cache import PassCache
from abstopk_eval.models.registry import ModelSpec, config_dims
from abstopk_eval.models.sequence_start import SequenceStart, sequence_start_of

log = logging.getLogger("abstopk_eval")

HiddenFn = Callable[[Tensor], Tensor]

RESUME_RTOL = 1e-4
"""Relative max-abs difference of logits tolerated between running only blocks L+1.. and the full spliced pass."""

# attribute paths of the decoder-block ModuleList of the usual families, tried first (see `find_decoder_layers`)
_LAYER_PATHS: tuple[tuple[str, ...], ...] = (
    ("model", "layers"),  # Llama, Gemma, Gemma2, Gemma3 text, Qwen2/3, Mistral, SmolLM
    ("model", "language_model", "layers"),  # multimodal wrappers (e.g. Gemma3ForConditionalGeneration)
    ("transformer", "h"),  # GPT-2, GPT-J, GPT-Neo
    ("gpt_neox", "layers"),  # GPT-NeoX / Pythia
    ("model", "decoder", "layers"),  # OPT
)


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-block ModuleList of any HF causal LM: a known attribute path (`_LAYER_PATHS`), else the one
    ModuleList in the model with as many entries as its config has layers (so a new family needs no code)."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    try:
        n_layers = config_dims(model.config)[0]
    except AttributeError:
        n_layers = None
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and n_layers is not None and len(module) == n_layers
    ]
    if len(found) == 1:
        return found[0][1]
    where = f" ({len(found)} candidate lists: {', '.join(n for n, _ in found)})" if found else ""
    raise UserError(
        f"unsupported architecture {type(model).__name__}: cannot find its decoder blocks (looked for "
        f"{', '.join('.'.join(p) for p in _LAYER_PATHS)}, then a ModuleList of {n_layers} blocks){where}"
    )


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the wanted layer has run."""


def _hidden_of(output: Any) -> Tensor:
    """The hidden state in a block's output (a tensor, or a tuple whose first element is it)."""
    return output if isinstance(output, Tensor) else output[0]


def _with_hidden(output: Any, hidden: Tensor) -> Any:
    """`output` with its hidden state replaced by `hidden` (same container type)."""
    if isinstance(output, Tensor):
        return hidden
    return (hidden, *output[1:])


class _PassThrough(nn.Module):
    """Stands in for a decoder block: returns its input, or a fixed tensor (the block whose output is given)."""

    def __init__(self, output: Tensor | None = None) -> None:
        super().__init__()
        self.output = output

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states if self.output is None else self.output.to(hidden_states.dtype)


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


def _position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that count only real tokens, so left padding does not shift positional encodings."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def per_token_cross_entropy(logits: Tensor, targets: Tensor, chunk_rows: int = 4096) -> Tensor:
    """Float32 cross-entropy per position for `logits[..., V]` and `targets[...]`.

    Works through at most `chunk_rows` positions at a time, so the only large tensor is `logits` itself
    (no full float32 copy of bf16 logits, no full log-softmax).
    """
    shape = targets.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1).to(flat_logits.device)
    out = torch.empty(flat_targets.shape[0], dtype=torch.float32, device=flat_logits.device)
    for start in range(0, flat_targets.shape[0], chunk_rows):
        block = flat_logits[start : start + chunk_rows].float()
        tgt = flat_targets[start : start + chunk_rows]
        out[start : start + chunk_rows] = torch.logsumexp(block, dim=-1) - block.gather(-1, tgt[:, None]).squeeze(-1)
    return out.reshape(shape)


def lm_loss_per_token(input_ids: Tensor, logits: Tensor) -> Tensor:
    """Next-token cross-entropy `[B, T-1]`: position t scores `input_ids[:, t+1]` under `logits[:, t]`.

    Padding is not masked here; multiply by `attention_mask[:, 1:]` to ignore padded targets.
    """
    return per_token_cross_entropy(logits[:, :-1], input_ids[:, 1:])


class ModelAdapter:
    """Wraps (model, tokenizer, spec) and hooks decoder-block outputs for capture and replacement."""

    def __init__(self, model: nn.Module, tokenizer: Any, spec: ModelSpec | None = None) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.spec = spec
        self._layers = find_decoder_layers(model)
        self._sequence_start = sequence_start_of(tokenizer)
        self._resume: dict[int, bool] = {}
        """Per layer: whether `logits_from_residual` may run only the later blocks (verified on first use)."""
        self.pass_cache: PassCache | None = None
        """Where SAE-independent passes of this model are cached on disk (`models.pass_cache`); set by the run's
        session, None in bare use (nothing is cached)."""
        if spec is not None and len(self._layers) != spec.n_layers:
            raise UserError(f"model has {len(self._layers)} blocks but {spec.key} should have {spec.n_layers}")

    @classmethod
    def from_loaded(cls, loaded: Any) -> ModelAdapter:
        """Build from a `LoadedModel`."""
        return cls(loaded.model, loaded.tokenizer, loaded.spec)

    # ------------------------------------------------------------------ properties

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def n_layers(self) -> int:
        return len(self._layers)

    @property
    def d_model(self) -> int:
        return config_dims(self._model.config)[1]

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def sequence_start(self) -> SequenceStart:
        """How this model's sequences begin and which positions are special (`models.sequence_start`)."""
        return self._sequence_start

    @property
    def bos_token_id(self) -> int | None:
        """The start token every sequence gets (`sequence_start.start_token_id`; None: nothing is prepended)."""
        return self._sequence_start.start_token_id

    @property
    def pad_token_id(self) -> int:
        """The id padded positions get (the one rule for every caller; see `batching.pad_token_id_of`)."""
        return pad_token_id_of(self._tokenizer)

    def layers(self) -> nn.ModuleList:
        """The decoder-block ModuleList."""
        return self._layers

    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"layer {layer} is out of range (the model has {self.n_layers} layers: 0..{self.n_layers - 1})"
            )
        return layer

    def _forward_kwargs(self, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"input_ids": input_ids.to(self.device), "use_cache": False}
        if attention_mask is not None:
            mask = attention_mask.to(self.device)
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = _position_ids(mask)
        return kwargs

    # ------------------------------------------------------------------ capture

    def activations(self, input_ids: Tensor, layer: int, attention_mask: Tensor | None = None) -> Tensor:
        """Residual stream `[B, T, d_model]` (float32, no grad) after block `layer`; later blocks do not run."""
        self._check_layer(layer)
        captured: list[Tensor] = []

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured.append(_hidden_of(output).detach())
            raise _StopForward

        handle = self._layers[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                self._model(**self._forward_kwargs(input_ids, attention_mask))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"block {layer} did not run during the forward pass")
        return captured[0].float()

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, last_only: bool = False) -> Tensor:
        """Logits of a plain forward pass (no grad, model dtype): `[B, T, vocab]`, or `[B, vocab]` at the last
        position only (the LM head runs on that position alone; left-pad batches so it is every row's last token)."""
        with torch.no_grad():
            return self._logits_of(self._forward_kwargs(input_ids, attention_mask), last_only)

    def _logits_of(self, kwargs: dict[str, Any], last_only: bool) -> Tensor:
        if not last_only:
            return self._model(**kwargs).logits
        with _contiguous_head_input(self._model):
            try:
                out = self._model(**kwargs, logits_to_keep=1)
            except TypeError:  # a model class without `logits_to_keep`
                out = self._model(**kwargs)
        return out.logits[:, -1]

    # ------------------------------------------------------------------ replacement

    @contextmanager
    def replace_output(self, layers: int | Sequence[int], fn: HiddenFn) -> Iterator[None]:
        """While active, each listed block's output hidden state `h` is replaced by `fn(h)`."""
        layer_list = [layers] if isinstance(layers, int) else list(layers)
        for layer in layer_list:
            self._check_layer(layer)

        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            hidden = _hidden_of(output)
            new = fn(hidden)
            if new.shape != hidden.shape:
                raise ValueError(f"replacement fn returned shape {tuple(new.shape)}, expected {tuple(hidden.shape)}")
            return _with_hidden(output, new.to(hidden.dtype))

        handles = []
        try:
            for layer in layer_list:
                handles.append(self._layers[layer].register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward_with_replacement(
        self, input_ids: Tensor, layer: int | Sequence[int], fn: HiddenFn, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Logits with block `layer`'s output replaced by `fn(output)` (e.g. an SAE reconstruction)."""
        with self.replace_output(layer, fn):
            return self.logits(input_ids, attention_mask)

    # ------------------------------------------------------------------ resuming from a residual

    def logits_from_residual(
        self,
        resid: Tensor,
        layer: int,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        last_only: bool = True,
        grad: bool = False,
        resume: bool | None = None,
    ) -> Tensor:
        """Logits (model dtype) when block `layer` outputs `resid` `[B, T, d_model]` for `input_ids` `[B, T]`:
        `[B, vocab]` at the last position (`last_only`), else `[B, T, vocab]`; differentiable w.r.t. `resid` if
        `grad`.

        Only blocks `layer + 1 ..` run. The first call per layer also runs the full forward pass with `resid`
        spliced in, returns it, and keeps resuming only if both agree within `RESUME_RTOL` (otherwise later
        calls run full spliced passes). `resume` overrides that choice: True always resumes (unchecked), False
        always runs the full spliced pass.
        """
        self._check_layer(layer)
        if tuple(resid.shape[:2]) != tuple(input_ids.shape):
            raise ValueError(f"resid has shape {tuple(resid.shape)}, input_ids {tuple(input_ids.shape)}")
        kwargs = self._forward_kwargs(input_ids, attention_mask)
        resid = resid.to(self.device)
        if resume is None:
            if layer not in self._resume and self.pass_cache is not None:
                recorded = self.pass_cache.resume_record(layer)  # checked by an earlier run of this model
                if recorded is not None:
                    self._resume[layer] = recorded
            if layer not in self._resume:
                full = self._verify_resume(resid, layer, kwargs, last_only)
                if self.pass_cache is not None:
                    self.pass_cache.record_resume(layer, self._resume[layer])
                if not grad:
                    return full
            resume = self._resume[layer]
        with torch.set_grad_enabled(grad):
            if resume:
                with self._blocks_skipped(layer, resid):
                    return self._logits_of(kwargs, last_only)
            with self.replace_output(layer, lambda _h: resid):
                return self._logits_of(kwargs, last_only)

    def resumes_from_residual(self, layer: int) -> bool | None:
        """Whether `logits_from_residual` runs only the blocks after `layer` (None: not yet verified)."""
        return self._resume.get(layer)

    def _verify_resume(self, resid: Tensor, layer: int, kwargs: dict[str, Any], last_only: bool) -> Tensor:
        """Full spliced logits; records whether resuming after `layer` reproduces them."""
        with torch.no_grad():
            with self.replace_output(layer, lambda _h: resid):
                full = self._logits_of(kwargs, last_only)
            try:
                with self._blocks_skipped(layer, resid):
                    fast = self._logits_of(kwargs, last_only)
                err = float((fast.float() - full.float()).abs().max()) / max(float(full.float().abs().max()), 1e-6)
            except Exception as exc:  # an architecture whose blocks cannot be skipped this way
                log.warning("resuming after block %d failed (%s); using full forward passes", layer, exc)
                err = float("inf")
            else:
                if not err <= RESUME_RTOL:
                    log.warning(
                        "logits resumed after block %d differ from full ones (rel %.2g); using full forward passes",
                        layer,
                        err,
                    )
        self._resume[layer] = err <= RESUME_RTOL
        return full

    @contextmanager
    def _blocks_skipped(self, layer: int, resid: Tensor) -> Iterator[None]:
        """Blocks 0..layer-1 pass their input through and block `layer` returns `resid` (restored on exit)."""
        saved = [self._layers[i] for i in range(layer + 1)]
        try:
            for i in range(layer):
                self._layers[i] = _PassThrough()
            self._layers[layer] = _PassThrough(resid)
            yield
        finally:
            for i, block in enumerate(saved):
                self._layers[i] = block

    # ------------------------------------------------------------------ output head

    def linear_head(self) -> tuple[Tensor, Tensor | None] | None:
        """(weight [V, D], bias [V] or None) of the output head when it is a plain `nn.Linear`, else None.

        Whether the model uses the head's output as its logits unchanged (no soft-capping) is a separate question:
        compare the logits with the head's output captured by `capturing_head`."""
        head = self._model.get_output_embeddings() if hasattr(self._model, "get_output_embeddings") else None
        if not isinstance(head, nn.Linear):
            return None
        return head.weight, head.bias

    @contextmanager
    def capturing_head(self) -> Iterator[list[tuple[Tensor, Tensor]]]:
        """While active, every call of the output head appends (its input, its output) to the yielded list: the
        final (normed) hidden state and the logits before any post-processing (e.g. Gemma-2's soft-capping)."""
        head = self._model.get_output_embeddings() if hasattr(self._model, "get_output_embeddings") else None
        if head is None:
            raise UserError(f"{type(self._model).__name__} has no output embeddings to capture")
        seen: list[tuple[Tensor, Tensor]] = []
        handle = head.register_forward_hook(lambda _m, args, out: seen.append((args[0].detach(), out.detach())))
        try:
            yield seen
        finally:
            handle.remove()

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        input_ids: Tensor,
        *,
        layers: int | Sequence[int] | None = None,
        fn: HiddenFn | None = None,
        attention_mask: Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """`model.generate`, with `fn` applied to the listed blocks' outputs at every step (prompt pass included)."""
        if (layers is None) != (fn is None):
            raise ValueError("pass both layers and fn, or neither")
        kwargs: dict[str, Any] = {"input_ids": input_ids.to(self.device), **generate_kwargs}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        with torch.no_grad():
            if layers is None or fn is None:
                return self._model.generate(**kwargs)
            with self.replace_output(layers, fn):
                return self._model.generate(**kwargs)

    # ------------------------------------------------------------------ loss

    @staticmethod
    def lm_loss_per_token(input_ids: Tensor, logits: Tensor) -> Tensor:
        """Next-token cross-entropy `[B, T-1]` in float32 (see module function `lm_loss_per_token`)."""
        return lm_loss_per_token(input_ids, logits)
