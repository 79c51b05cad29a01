"""Runtime decisions that depend on the device or the data budget, each made once here.

- The language model's dtype (`resolve_llm_dtype`): bf16 by default on CUDA, fp32 elsewhere.
- TF32 matmuls on CUDA (`tf32_enabled`, `apply_matmul_precision`): on unless refused.
- Where training activations come from (`activation_source`): a cache when the budget fits in it, else streamed
  from the model.
- How often a run may revisit its data (`check_repeats`): more than `MAX_EPOCHS` passes stop the run unless
  `--allow-repeats`.
"""

from __future__ import annotations

from typing import Any

import torch

from abstopk_eval.errors import UserError

LLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""`--llm-dtype` choices; "auto" is bf16 on CUDA and fp32 elsewhere."""
CACHE_DTYPES = ("float32", "float16", "bfloat16")
"""`--cache-dtype` choices: how a training activation cache stores its rows."""
ACTIVATION_SOURCES = ("auto", "cache", "stream")
MAX_EPOCHS = 4.0
"""Passes over the same training tokens a run may make without `--allow-repeats`."""
STREAM_BUFFER_TOKENS = 1 << 18
"""Activation rows a streamed run shuffles together (one LM pass fills the buffer, then it is drawn in a seeded
random order); part of a streamed SAE's identity."""
DEFAULT_LLM_BATCH_SIZE = 8
"""Sequences per language-model forward pass when caching or streaming activations."""


def device_type(device: str) -> str:
    return torch.device(device).type


def resolve_llm_dtype(name: str | None, device: str) -> str:
    """The dtype the language model computes in: `name`, or for "auto"/None bf16 on CUDA and fp32 elsewhere."""
    if name in (None, "auto"):
        return "bfloat16" if on_cuda(device) else "float32"
    if name not in LLM_DTYPES:
        raise UserError(f"unknown --llm-dtype {name!r}; use one of {', '.join(LLM_DTYPES)}")
    return str(name)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def tf32_enabled(device: str, *, refused: bool = False) -> bool:
    """TF32 matmuls run on CUDA unless refused (`--no-tf32`); other devices have no TF32."""
    return on_cuda(device) and not refused


def apply_matmul_precision(enabled: bool) -> None:
    """Set torch's fp32 matmul precision process-wide: "high" (TF32 on CUDA) when enabled, else "highest"."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def activation_source(choice: str, *, train_tokens: int, cache_tokens: int) -> str:
    """ "cache" or "stream": the explicit choice, else ("auto") a cache when the budget fits in it."""
    if choice not in ACTIVATION_SOURCES:
        raise UserError(f"unknown activation source {choice!r}; use one of {', '.join(ACTIVATION_SOURCES)}")
    if choice != "auto":
        return choice
    return "stream" if train_tokens > cache_tokens else "cache"


def planned_source(
    choice: str, preset: Any, *, epochs: int, allow_repeats: bool, notes: list[str] | None = None
) -> str:
    """The activation source of a run of `preset`, with the checks that need no data: epochs only for a stream, and
    a cache smaller than the budget by more than MAX_EPOCHS refused unless allowed (noted instead with `notes`)."""
    source = activation_source(choice, train_tokens=preset.train_tokens, cache_tokens=preset.cache_tokens)
    if epochs < 1:
        raise UserError("--epochs must be at least 1")
    if epochs != 1 and source != "stream":
        raise UserError(
            "--epochs applies to streamed activations (--stream); a cached run makes train_tokens / cache_tokens "
            "passes over its cache"
        )
    if source == "cache":
        try:  # the cache holds at most cache_tokens: known before any work
            check_repeats(preset.train_tokens, preset.cache_tokens, allow=allow_repeats, what="an activation cache")
        except UserError as err:
            if notes is None:
                raise
            notes.append(str(err))
    return source


def epochs_of(train_tokens: int, unique_tokens: int) -> float:
    return train_tokens / max(unique_tokens, 1)


def check_repeats(train_tokens: int, unique_tokens: int, *, allow: bool, what: str) -> float:
    """The number of passes over the training data; UserError when above MAX_EPOCHS and not allowed."""
    epochs = epochs_of(train_tokens, unique_tokens)
    if epochs > MAX_EPOCHS and not allow:
        raise UserError(
            f"training on {train_tokens:,} tokens from {what} of {unique_tokens:,} unique tokens repeats the data "
            f"{epochs:.1f} times (more than {MAX_EPOCHS:g}): use a larger corpus (e.g. --corpus pile), --stream, "
            "or pass --allow-repeats"
        )
    return epochs


def on_cuda(device: str) -> bool:
    """The one test for CUDA-only behaviour (TF32, pinned-memory prefetch, moving the LM off the GPU)."""
    return device_type(device) == "cuda"


def select_device(device: str) -> None:
    """Make `cuda:N` the current CUDA device (kernels and cache clearing go there); nothing elsewhere."""
    if on_cuda(device) and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
