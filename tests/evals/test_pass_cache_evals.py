"""SAE-independent model passes come from the on-disk pass cache: a second run with a new SAE runs only the
SAE-dependent blocks (counted with hooks on the decoder blocks), with results identical to the uncached path;
core's spliced passes run only blocks L+1.. from the clean residual at L and equal the full spliced forward."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import pytest
import torch

from abstopk_eval.evals import pooled
from abstopk_eval.evals.absorption.main import _Sequence, collect_activations
from abstopk_eval.evals.core.main import _ce_and_kl, _splice_fn, loss_stats, run_core
from abstopk_eval.evals.knowledge import PromptRunner, encode
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.batching import pad_sequences
from abstopk_eval.models.pass_cache import PassCache, pass_identity
from tests.helpers.context import make_eval_context, random_tokens
from tests.helpers.models import D_MODEL, N_LAYERS, TINY_BUILDERS, blocks_run
from tests.helpers.saes import random_sae

ARCHS = sorted(TINY_BUILDERS)
LAYER = 1
TEXTS = ["abcdefgh", "hello world!", "xyz", "sparse autoencoders", "q"]


def _adapters(arch: str, tmp_path) -> tuple[ModelAdapter, ModelAdapter]:
    """(uncached, cached) adapters of one tiny model of `arch`."""
    model, tok = TINY_BUILDERS[arch](seed=0)
    plain, cached = ModelAdapter(model, tok), ModelAdapter(model, tok)
    cached.pass_cache = PassCache(tmp_path / "model_passes", pass_identity({"key": arch, "weights": "test"}, "cpu"))
    return plain, cached


def _core_ctx(adapter: ModelAdapter, tokens: torch.Tensor):
    acts = adapter.activations(tokens, LAYER)[:, 1:].reshape(-1, D_MODEL)
    return make_eval_context(adapter, layer=LAYER, eval_tokens=tokens, heldout_activations=acts, dataset="random")


# ----------------------------------------------------------------------------- blocks L+1.. from the residual


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_after_l_from_the_clean_residual_give_the_full_forward_logits(arch, tmp_path):
    ad, _ = _adapters(arch, tmp_path)
    tokens = random_tokens(3, 10, bos_token_id=ad.bos_token_id)
    full = ad.logits(tokens)
    for layer in range(N_LAYERS):
        resid = ad.activations(tokens, layer)
        resumed = ad.logits_from_residual(resid, layer, tokens, last_only=False, resume=True)
        torch.testing.assert_close(resumed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_spliced_ce_and_kl_equal_the_full_spliced_forward(arch, tmp_path):
    ad, _ = _adapters(arch, tmp_path)
    tokens = random_tokens(6, 12, bos_token_id=ad.bos_token_id)
    saes = {"a": random_sae("abstopk", seed=1), "b": random_sae("topk", seed=2)}
    ctx = _core_ctx(ad, tokens)
    clean, zero, zero_kept, spliced = loss_stats(ctx, saes)
    # the path before resuming: a full clean pass, then a full forward pass per splice
    ref: dict = {"clean": [], "zero": [], "zero_kept": [], "a": [], "b": []}
    ref_kl: dict = {"zero": [], "zero_kept": [], "a": [], "b": []}
    for start in range(0, tokens.shape[0], ctx.batch_size):
        batch = tokens[start : start + ctx.batch_size]
        keep = ad.sequence_start.special_mask(batch)
        logp = torch.log_softmax(ad.logits(batch)[:, :-1].float(), -1)
        ref["clean"].append(-logp.gather(-1, batch[:, 1:, None]).squeeze(-1).sum(-1))
        p = logp.exp()
        runs = [("zero", None, torch.zeros_like(keep)), ("zero_kept", None, keep)]
        for name, sae, kept in [*runs, *((n, sae, keep) for n, sae in saes.items())]:
            logits = ad.forward_with_replacement(batch, LAYER, _splice_fn(sae, kept))
            ce, kl = _ce_and_kl(logits, batch, p, torch.linalg.vecdot(p, logp))
            ref[name].append(ce.sum(-1))
            ref_kl[name].append(kl.sum(-1))
    got = {"clean": clean, "zero": zero, "zero_kept": zero_kept, **spliced}
    for name, tot in got.items():
        torch.testing.assert_close(torch.cat(tot.ce_per_seq).float(), torch.cat(ref[name]), atol=1e-5, rtol=1e-5)
        if name != "clean":
            torch.testing.assert_close(torch.cat(tot.kl_per_seq).float(), torch.cat(ref_kl[name]), atol=1e-5, rtol=0)
    assert not torch.allclose(torch.cat(zero.ce_per_seq), torch.cat(clean.ce_per_seq))  # the splice did something


# ----------------------------------------------------------------------------- warm runs do only SAE work


@pytest.mark.parametrize("arch", ARCHS)
def test_core_second_run_runs_only_the_new_sae_blocks(arch, tmp_path):
    plain, cached = _adapters(arch, tmp_path)
    tokens = random_tokens(6, 12, bos_token_id=plain.bos_token_id)
    n_batches = 2  # batch size 4
    new = {"b": random_sae("topk", seed=2)}
    run_core(_core_ctx(cached, tokens), {"a": random_sae("abstopk", seed=1)})  # cold: fills the cache
    ctx = _core_ctx(cached, tokens)
    with blocks_run(cached) as calls:
        warm = run_core(ctx, new)["b"]
    # linear heads need nothing more; Gemma-2's soft-capped head recomputes the clean logits from the residual
    per_batch = 2 if arch == "gemma2" else 1
    assert calls == Counter(dict.fromkeys(range(LAYER + 1, N_LAYERS), n_batches * per_batch)), calls
    assert cached.pass_cache.builds > 0 and cached.pass_cache.rebuilt_corrupt == 0
    uncached = run_core(_core_ctx(plain, tokens), new)["b"]
    assert asdict(warm.eval_result_metrics) == asdict(uncached.eval_result_metrics)
    # a new process: the cache on disk alone (and the remembered resume check) serves the clean passes
    again, _ = _adapters(arch, tmp_path)
    again.pass_cache = PassCache(cached.pass_cache.root, cached.pass_cache.identity)
    ctx = _core_ctx(again, tokens)
    with blocks_run(again) as calls:
        other = run_core(ctx, {"c": random_sae("relu", seed=3)})["c"]
    assert calls == Counter(dict.fromkeys(range(LAYER + 1, N_LAYERS), n_batches * per_batch)), calls
    assert other.eval_result_metrics.model_performance_preservation.ce_loss_without_sae == pytest.approx(
        uncached.eval_result_metrics.model_performance_preservation.ce_loss_without_sae, abs=0
    )


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_pooled_second_call_with_a_new_sae_runs_no_block(arch, tmp_path):
    plain, cached = _adapters(arch, tmp_path)
    sae_a, sae_b = random_sae("abstopk", seed=1), random_sae("topk", seed=2)
    kw = dict(dataset="d", seed=0, context_length=16)
    pooled.pooled_activations(make_eval_context(cached, layer=LAYER), {"a": sae_a}, TEXTS, **kw)
    pooled.clear_pooled_cache()  # as a new process: nothing in memory
    with blocks_run(cached) as calls:
        warm = pooled.pooled_activations(make_eval_context(cached, layer=LAYER), {"b": sae_b}, TEXTS, **kw)
    assert calls == Counter()
    pooled.clear_pooled_cache()
    cold = pooled.pooled_activations(make_eval_context(plain, layer=LAYER), {"b": sae_b}, TEXTS, **kw)
    assert torch.equal(warm.model, cold.model) and torch.equal(warm.latents["b"], cold.latents["b"])
    assert torch.equal(warm.n_tokens, cold.n_tokens) and warm.n_truncated == cold.n_truncated
    # what the SAE part reads: each text's positions, first position / BOS / EOS / padding left out
    for i, text in enumerate(TEXTS):
        ids, n = pooled.tokenize_texts(plain.tokenizer, [text], 16)
        x = plain.activations(torch.tensor(ids), LAYER)[0]
        keep = pooled.pooled_positions(plain.tokenizer, torch.tensor(ids), torch.ones(1, len(ids[0])))[0]
        if not keep.any():  # Qwen's one-token text: its only position is the first, nothing pooled
            assert warm.n_tokens[i] == 0 and not warm.model[i].any()
            continue
        torch.testing.assert_close(warm.model[i], x[keep].mean(0), atol=1e-5, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(warm.latents["b"][i], sae_b.encode(x[keep]).mean(0), atol=1e-5, rtol=0)


def test_prompt_runner_clean_passes_come_from_the_cache(tmp_path):
    plain, cached = _adapters("llama", tmp_path)
    tok = plain.tokenizer
    ids, mask = pad_sequences([encode(tok, t, tok.bos_token_id) for t in TEXTS], tok.pad_token_id, side="left")
    PromptRunner(cached, LAYER).logits_and_residual(ids, mask)
    PromptRunner(cached, LAYER).residual(ids, mask)
    PromptRunner(cached, LAYER).logits(ids, mask)
    runner, ref = PromptRunner(cached, LAYER), PromptRunner(plain, LAYER)
    with blocks_run(cached) as calls:
        logits, resid = runner.logits_and_residual(ids, mask)
        alone, clean = runner.residual(ids, mask), runner.logits(ids, mask)
    assert calls == Counter()
    ref_logits, ref_resid = ref.logits_and_residual(ids, mask)
    assert torch.equal(logits, ref_logits) and torch.equal(resid, ref_resid)
    assert torch.equal(alone, ref.residual(ids, mask)) and torch.equal(clean, ref.logits(ids, mask))
    with blocks_run(cached) as calls:  # an edited pass is never cached
        runner.logits(ids, mask, fn=lambda h: h * 2)
    assert calls == Counter(dict.fromkeys(range(N_LAYERS), 1))


def test_absorption_rows_come_from_the_cache(tmp_path):
    plain, cached = _adapters("llama", tmp_path)
    sequences = [_Sequence([1, 10, 11, 12, 13], [(0, 2), (1, 4)]), _Sequence([1, 20, 21], [(2, 1)])]
    args = (LAYER, sequences, 3, 2, plain.pad_token_id, "rows")
    collect_activations(cached, *args)
    with blocks_run(cached) as calls:
        warm = collect_activations(cached, *args)
    assert calls == Counter()
    assert torch.equal(warm, collect_activations(plain, *args))


def _knowledge_run(which: str):
    """(run function, tiny config) of RAVEL or unlearning, as their own tests set them up."""
    from abstopk_eval.evals.ravel.main import run_ravel
    from abstopk_eval.evals.unlearning.main import run_unlearning
    from tests.helpers.knowledge import tiny_ravel_config, tiny_unlearning_config

    return (run_ravel, tiny_ravel_config()) if which == "ravel" else (run_unlearning, tiny_unlearning_config())


@pytest.mark.parametrize("which", ["ravel", "unlearning"])
def test_knowledge_evaluations_run_no_block_up_to_l_when_warm(which, knowledge_model, knowledge_facts, tmp_path):
    from tests.helpers.knowledge import LAYER as K_LAYER
    from tests.helpers.knowledge import knowledge_context, metrics_and_details

    run, cfg = _knowledge_run(which)
    plain = knowledge_model
    cached = ModelAdapter(plain.model, plain.tokenizer)
    cached.pass_cache = PassCache(tmp_path, pass_identity({"key": "knowledge", "weights": "test"}, "cpu"))
    run(knowledge_context(cached), {"a": random_sae("abstopk", seed=1)}, cfg)  # cold: fills the cache
    built = cached.pass_cache.builds
    if which == "ravel":  # the clean model's attribution gradients are SAE-independent: cached too
        assert list((cached.pass_cache.folder / f"layer_{K_LAYER}" / "ravel-grads").glob("*.safetensors"))
    new = {"b": random_sae("topk", seed=2)}
    ctx = knowledge_context(cached)  # (its held-out activations run the model: not part of the evaluation)
    with blocks_run(cached) as calls:
        warm = run(ctx, new, cfg)["b"]
    assert not any(calls[i] for i in range(K_LAYER + 1)), calls  # no clean pass, no block up to L
    assert cached.pass_cache.builds == built  # everything SAE-independent came from the cache
    assert metrics_and_details(warm) == metrics_and_details(run(knowledge_context(plain), new, cfg)["b"])
