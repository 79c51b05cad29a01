"""The residual-stream adapter on a tiny random model of every supported family: capture, early stop, padding,
splicing, hook clean-up, generation, loss helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abstopk_eval.errors import UserError
from abstopk_eval.models.adapter import ModelAdapter, lm_loss_per_token, per_token_cross_entropy
from tests.helpers.models import TINY_BUILDERS, tiny_batch, tiny_llama
from tests.helpers.tokenizer import tiny_tokenizer

ARCHS = sorted(TINY_BUILDERS)


def _final_norm(model: torch.nn.Module) -> torch.nn.Module:
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        obj = model
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            continue
    raise AssertionError(f"no final norm on {type(model).__name__}")


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    # one tokenizer kind for every family (pad 0, BOS 1 prepended): these tests read ids, not sequence starts
    model, tok = TINY_BUILDERS[request.param](tokenizer=tiny_tokenizer("bos"))
    return ModelAdapter(model, tok), tiny_batch(tok)


def _hook_count(adapter: ModelAdapter) -> int:
    """Forward hooks the adapter left on its blocks (transformers installs its own output-capturing hooks)."""
    return sum(
        getattr(hook, "__module__", "") == "abstopk_eval.models.adapter"
        for block in adapter.layers()
        for hook in block._forward_hooks.values()
    )


def test_activations_match_hidden_states(tiny):
    adapter, batch = tiny
    ids, _mask = batch["input_ids"], batch["attention_mask"]
    assert adapter.n_layers == 3 and adapter.d_model == 32 and adapter.bos_token_id == 1
    with torch.no_grad():
        full = adapter.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    for layer in range(adapter.n_layers):
        acts = adapter.activations(ids, layer)
        assert acts.shape == (2, ids.shape[1], 32) and acts.dtype == torch.float32 and not acts.requires_grad
        if layer < adapter.n_layers - 1:
            torch.testing.assert_close(acts, full.hidden_states[layer + 1], atol=1e-5, rtol=0)
        else:  # HF's last hidden state has the final norm applied; ours is the raw block output
            with torch.no_grad():
                torch.testing.assert_close(_final_norm(adapter.model)(acts), full.hidden_states[-1], atol=1e-5, rtol=0)
    assert _hook_count(adapter) == 0


def test_activations_stop_early(tiny):
    adapter, batch = tiny
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(adapter.layers())]
    try:
        adapter.activations(batch["input_ids"], 0)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]


def test_left_padding_does_not_shift_activations(tiny):
    adapter, _ = tiny
    seq = torch.tensor([[1, 10, 20, 30, 40, 50]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(seq)], dim=1)
    for layer in range(adapter.n_layers):
        torch.testing.assert_close(
            adapter.activations(padded, layer, mask)[:, 3:], adapter.activations(seq, layer), atol=1e-5, rtol=0
        )
    torch.testing.assert_close(adapter.logits(padded, mask)[:, 3:], adapter.logits(seq), atol=1e-5, rtol=0)


def test_identity_replacement_keeps_logits(tiny):
    adapter, batch = tiny
    base = adapter.logits(batch["input_ids"])
    for layer in range(adapter.n_layers):
        out = adapter.forward_with_replacement(batch["input_ids"], layer, lambda h: h)
        torch.testing.assert_close(out, base, atol=0, rtol=0)
    with adapter.replace_output([0, 1, 2], lambda h: h.clone()):
        torch.testing.assert_close(adapter.logits(batch["input_ids"]), base, atol=0, rtol=0)
    assert _hook_count(adapter) == 0


def test_replacement_changes_only_from_its_layer(tiny):
    adapter, batch = tiny
    ids = batch["input_ids"]
    base_logits = adapter.logits(ids)
    base = [adapter.activations(ids, layer) for layer in range(adapter.n_layers)]
    shift = torch.linspace(-1, 1, 32)

    def fn(h: torch.Tensor) -> torch.Tensor:
        return 0.5 * h + shift

    target = 1
    with adapter.replace_output(target, fn):
        acts = [adapter.activations(ids, layer) for layer in range(adapter.n_layers)]
        logits = adapter.logits(ids)
    torch.testing.assert_close(acts[0], base[0], atol=0, rtol=0)
    torch.testing.assert_close(acts[target], fn(base[target]), atol=1e-6, rtol=0)
    assert not torch.allclose(acts[2], base[2], atol=1e-3)
    assert not torch.allclose(logits, base_logits, atol=1e-3)
    assert _hook_count(adapter) == 0
    torch.testing.assert_close(adapter.logits(ids), base_logits, atol=0, rtol=0)


def test_hooks_removed_on_exception(tiny):
    adapter, batch = tiny
    base = adapter.logits(batch["input_ids"])
    with pytest.raises(RuntimeError, match="boom"), adapter.replace_output([0, 2], lambda h: h * 0):
        assert _hook_count(adapter) == 2
        raise RuntimeError("boom")
    assert _hook_count(adapter) == 0

    def failing(h: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("inside the hook")

    with pytest.raises(ZeroDivisionError):
        adapter.forward_with_replacement(batch["input_ids"], 1, failing)
    assert _hook_count(adapter) == 0
    torch.testing.assert_close(adapter.logits(batch["input_ids"]), base, atol=0, rtol=0)


def test_generate_with_and_without_replacement(tiny):
    adapter, _ = tiny
    prompt = torch.tensor([[1, 10, 11, 12, 13]])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        reference = adapter.model.generate(input_ids=prompt, pad_token_id=0, **kwargs)
    plain = adapter.generate(prompt, **kwargs)
    assert torch.equal(plain, reference)

    seen: list[int] = []
    steer = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 50

    def fn(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.shape[1])
        return h * 0 + steer

    steered = adapter.generate(prompt, layers=0, fn=fn, **kwargs)
    assert steered.shape == plain.shape and not torch.equal(steered, plain)
    assert seen[0] == prompt.shape[1] and seen[1:] == [1] * 5  # prompt pass, then one token per step
    assert _hook_count(adapter) == 0


def test_unknown_layer_and_arch():
    model, tok = tiny_llama()
    adapter = ModelAdapter(model, tok)
    with pytest.raises(UserError, match="out of range"):
        adapter.activations(torch.tensor([[1, 2]]), 3)
    with pytest.raises(UserError, match="unsupported architecture"):
        ModelAdapter(torch.nn.Linear(2, 2), tok)  # type: ignore[arg-type]


def test_loss_helpers():
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (3, 9))
    logits = torch.randn(3, 9, 64) * 3
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1), reduction="none").view(3, 8)
    torch.testing.assert_close(lm_loss_per_token(ids, logits), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ModelAdapter.lm_loss_per_token(ids, logits), ref, atol=1e-5, rtol=1e-5)
    chunked = per_token_cross_entropy(logits[:, :-1].bfloat16(), ids[:, 1:], chunk_rows=5)
    assert chunked.dtype == torch.float32 and chunked.shape == (3, 8)
    torch.testing.assert_close(chunked, ref, atol=0.1, rtol=0.02)
