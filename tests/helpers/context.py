"""The one way tests build an `EvalContext`, so a change to the context's fields is made here, once."""

from __future__ import annotations

from typing import Any

import torch

from abstopk_eval.evals.context import EvalContext
from abstopk_eval.provenance import RunProvenance
from tests.helpers.models import D_MODEL
from tests.helpers.tokenizer import VOCAB


def make_eval_context(adapter: Any, *, layer: int, **overrides: Any) -> EvalContext:
    """An `EvalContext` for `adapter` at `layer`; `overrides` set any other field.

    Defaults: model key and name "tiny", provenance `RunProvenance(model=<model_key>)`, a 1 x 2 placeholder for the
    held-out tokens and one zero row (of the adapter's d_model, else `D_MODEL`) for the held-out activations, which
    may also be given as a tensor.
    """
    heldout = overrides.pop("heldout_activations", None)
    if heldout is None:
        heldout = torch.zeros(1, getattr(adapter, "d_model", D_MODEL))
    if isinstance(heldout, torch.Tensor):
        rows = heldout
        heldout = lambda: rows  # noqa: E731 - the context takes a zero-argument source
    fields: dict[str, Any] = dict(
        adapter=adapter,
        model_key="tiny",
        model_name="tiny",
        layer=layer,
        eval_tokens=torch.zeros(1, 2, dtype=torch.long),
        heldout_activations=heldout,
        dataset="test data",
    )
    fields.update(overrides)
    fields.setdefault("provenance", RunProvenance(model=fields["model_key"]))
    return EvalContext(**fields)


def random_tokens(
    n_seq: int, seq_len: int, *, bos_token_id: int | None, seed: int = 0, vocab: int = VOCAB
) -> torch.Tensor:
    """[n_seq, seq_len] uniform ids in 3..vocab-1 (no special token), column 0 set to BOS when there is one."""
    tokens = torch.randint(3, vocab, (n_seq, seq_len), generator=torch.Generator().manual_seed(seed))
    if bos_token_id is not None:
        tokens[:, 0] = bos_token_id
    return tokens
