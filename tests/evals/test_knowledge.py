"""The fact-recall evaluations' shared machinery: resuming the forward pass from an edited residual."""

from __future__ import annotations

import pytest
import torch

from abstopk_eval.evals.knowledge import PromptRunner, encode
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.batching import pad_sequences
from tests.helpers.knowledge import LAYER
from tests.helpers.models import TINY_BUILDERS


@pytest.mark.parametrize("builder", ["llama", "gemma3"])
def test_resumed_forward_matches_the_full_spliced_pass(builder):
    model, tok = TINY_BUILDERS[builder](seed=0)
    ad = ModelAdapter(model, tok)
    runner = PromptRunner(ad, LAYER)
    ids, mask = pad_sequences(
        [encode(tok, t, tok.bos_token_id) for t in ("hello there", "a b", "sparse autoencoders")],
        tok.pad_token_id,
        side="left",
    )
    resid = runner.residual(ids, mask) * 1.5  # an edited residual
    full = runner.logits(ids, mask, fn=lambda h: resid)
    fast = runner.logits_from_residual(resid, ids, mask)  # verifies on first use, keeps resuming if equal
    assert runner.resume
    assert torch.allclose(runner.logits_from_residual(resid, ids, mask), full, atol=1e-4, rtol=1e-4)
    assert torch.allclose(fast, full, atol=1e-4, rtol=1e-4)
    assert len(ad.layers()) == 3 and all(type(b).__name__ != "_PassThrough" for b in ad.layers())
