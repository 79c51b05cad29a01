"""ModelAdapter's language-model plumbing on the tiny model of every family: padded batches,
last-position logits, logits (and their gradient) from a given layer-L residual, the pad-id rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from abstopk_eval.models import adapter as adapter_mod
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.batching import pad_sequences
from tests.helpers.models import N_LAYERS, TINY_BUILDERS, tiny_llama
from tests.helpers.tokenizer import VOCAB, tiny_tokenizer

ARCHS = sorted(TINY_BUILDERS)
SEQS = [[1, 10, 11, 12, 13, 14, 15], [1, 20, 21], [1, 30, 31, 32, 33], [1]]


def _adapter(arch: str) -> ModelAdapter:
    # one tokenizer kind for every family (pad 0, BOS 1 prepended): SEQS are written with those ids
    model, tok = TINY_BUILDERS[arch](seed=0, tokenizer=tiny_tokenizer("bos"))
    return ModelAdapter(model, tok)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request) -> ModelAdapter:
    return _adapter(request.param)


def _full_kwargs(ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """A plain HF forward of a padded batch, built here rather than by the adapter."""
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
        "use_cache": False,
    }


def _spliced_logits(ad: ModelAdapter, resid: torch.Tensor, layer: int, ids, mask) -> torch.Tensor:
    """Full forward pass, every block run, with block `layer`'s output replaced by `resid` (grad enabled)."""
    with ad.replace_output(layer, lambda h: resid):
        return ad.model(**_full_kwargs(ids, mask)).logits


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad_choice", ["rule", "other"])
def test_padded_batches_give_the_unpadded_last_position_logits(tiny, side, pad_choice):
    pad = tiny.pad_token_id if pad_choice == "rule" else 37  # the pad id itself changes nothing
    ids, mask = pad_sequences(SEQS, pad, side=side)
    alone = torch.cat([tiny.logits(torch.tensor([s]), last_only=True) for s in SEQS])
    alone_full = torch.stack([tiny.logits(torch.tensor([s]))[0, -1] for s in SEQS])
    torch.testing.assert_close(alone, alone_full, atol=1e-5, rtol=0)  # logits_to_keep=1 = the full head's last row
    if side == "left":
        batched = tiny.logits(ids, mask, last_only=True)
    else:
        full = tiny.logits(ids, mask)
        batched = torch.stack([full[i, len(s) - 1] for i, s in enumerate(SEQS)])
    assert batched.shape == (len(SEQS), VOCAB)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- logits from a residual


def _edited_residual(ad: ModelAdapter, layer: int, ids, mask) -> torch.Tensor:
    resid = ad.activations(ids, layer, attention_mask=mask)
    noise = torch.randn(resid.shape, generator=torch.Generator().manual_seed(layer))
    return resid * 1.5 + noise


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_from_residual_equal_the_full_pass_with_the_residual_spliced_in(arch):
    ad = _adapter(arch)
    ids, mask = pad_sequences(SEQS, ad.pad_token_id, side="left")
    real = mask.bool()
    for layer in range(N_LAYERS):
        resid = _edited_residual(ad, layer, ids, mask)
        with torch.no_grad():
            full = _spliced_logits(ad, resid, layer, ids, mask)
        assert ad.resumes_from_residual(layer) is None
        first = ad.logits_from_residual(resid, layer, ids, mask)  # checks resuming, returns the full pass
        assert ad.resumes_from_residual(layer) is True
        resumed = ad.logits_from_residual(resid, layer, ids, mask)
        all_positions = ad.logits_from_residual(resid, layer, ids, mask, last_only=False)
        assert first.shape == resumed.shape == (len(SEQS), VOCAB)
        torch.testing.assert_close(first, full[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(resumed, full[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(all_positions[real], full[real], atol=1e-5, rtol=1e-5)
        clean = ad.logits(ids, mask, last_only=True)
        assert not torch.allclose(resumed, clean, atol=1e-3)  # the given residual, not the model's own, was used
    assert all(type(b).__name__ != "_PassThrough" for b in ad.layers())  # every block restored


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_w_r_t_the_residual_matches_autograd_through_the_full_model(arch):
    ad = _adapter(arch)
    ids, mask = pad_sequences(SEQS, ad.pad_token_id, side="left")
    layer = 1
    targets = torch.tensor([5, 17, 40, 63])
    base = _edited_residual(ad, layer, ids, mask)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), -1)
        return -logp[torch.arange(len(targets)), targets].sum()

    ref = base.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(_spliced_logits(ad, ref, layer, ids, mask)[:, -1]), ref)
    assert expected[mask.bool()].abs().max() > 1e-4  # a gradient worth comparing
    for _ in range(2):  # the first call (which also checks resuming) and a resumed one
        resid = base.clone().requires_grad_(True)
        (got,) = torch.autograd.grad(loss(ad.logits_from_residual(resid, layer, ids, mask, grad=True)), resid)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    assert ad.resumes_from_residual(layer) is True
    with torch.no_grad():  # grad=True is differentiable even inside no_grad
        resid = base.clone().requires_grad_(True)
        assert ad.logits_from_residual(resid, layer, ids, mask, grad=True).requires_grad


def test_resuming_that_disagrees_with_the_full_pass_falls_back_to_full_passes(monkeypatch, caplog):
    ad = ModelAdapter(*tiny_llama(seed=0))
    ids, mask = pad_sequences(SEQS, ad.pad_token_id, side="left")
    resid = _edited_residual(ad, 1, ids, mask)
    with torch.no_grad():
        full = _spliced_logits(ad, resid, 1, ids, mask)[:, -1]

    class Broken(adapter_mod._PassThrough):  # a block skipped wrongly: the given residual doubled
        def forward(self, hidden_states, *args, **kwargs):
            out = super().forward(hidden_states, *args, **kwargs)
            return out if self.output is None else 2 * out

    monkeypatch.setattr(adapter_mod, "_PassThrough", Broken)
    with caplog.at_level("WARNING", logger="abstopk_eval"):
        first = ad.logits_from_residual(resid, 1, ids, mask)
    assert ad.resumes_from_residual(1) is False and "differ from full ones" in caplog.text
    later = ad.logits_from_residual(resid, 1, ids, mask)
    torch.testing.assert_close(first, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(later, full, atol=1e-5, rtol=1e-5)
    forced = ad.logits_from_residual(resid, 1, ids, mask, resume=True)  # the broken shortcut, used on request
    assert not torch.allclose(forced, full, atol=1e-3)


def test_residual_of_the_wrong_shape_is_refused():
    ad = ModelAdapter(*tiny_llama(seed=0))
    ids, mask = pad_sequences(SEQS, ad.pad_token_id, side="left")
    with pytest.raises(ValueError, match="resid has shape"):
        ad.logits_from_residual(torch.zeros(2, ids.shape[1], ad.d_model), 1, ids, mask)


# ----------------------------------------------------------------------------- pad id


def _no_pad_hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer("bos")
    return PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, bos_token="<bos>", eos_token="<eos>")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: tiny_tokenizer("bos"), 0),  # a tokenizer with a pad token: its pad
        (lambda: tiny_tokenizer("none"), 0),  # Qwen-like: pad <|endoftext|>, no BOS
        (_no_pad_hf_tokenizer, 2),  # without one: its EOS
        (lambda: SimpleNamespace(pad_token_id=None, eos_token_id=None, bos_token_id=5), 5),
        (lambda: SimpleNamespace(pad_token_id=None, eos_token_id=None, bos_token_id=None), 0),
    ],
)
def test_pad_token_id_rule(make, expected):
    model, _ = tiny_llama(seed=0)
    assert ModelAdapter(model, make()).pad_token_id == expected


def test_generate_pads_finished_rows_with_the_pad_id():
    model, _ = tiny_llama(seed=0)
    tok = _no_pad_hf_tokenizer()
    ad = ModelAdapter(model, tok)
    assert tok.pad_token_id is None and ad.pad_token_id == tok.eos_token_id
    ids, mask = pad_sequences(SEQS[:2], ad.pad_token_id, side="left")
    # force row 0 to finish at once: its first new token is EOS; row 1 goes on
    eos_first = torch.zeros(VOCAB)
    eos_first[tok.eos_token_id] = 1e4

    class FinishRowZero:
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == ids.shape[1]:
                scores[0] = eos_first
            return scores

    from transformers import LogitsProcessorList

    out = ad.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        logits_processor=LogitsProcessorList([FinishRowZero()]),
    )
    new = out[:, ids.shape[1] :]
    assert new.shape[1] > 1  # row 1 went on, so row 0 has padded steps
    assert new[0, 0] == tok.eos_token_id and (new[0, 1:] == ad.pad_token_id).all()
