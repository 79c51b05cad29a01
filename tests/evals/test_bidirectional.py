"""Bidirectional study on a tiny Llama whose pole words carry a planted axis: a planted bipolar latent is found
with high sign consistency and share, the shuffled-pole control is near zero, a non-negative SAE scores 0 as one
latent and carries the axis only as two split latents, and nothing changes when a signed latent is negated."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from abstopk_eval.data.bipolar_pairs import AXES, CONTEXTS, build_instances, sentences
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bidirectional.eval_config import BidirectionalEvalConfig
from abstopk_eval.evals.bidirectional.main import pair_activations, run_bidirectional
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.pooled import decoder_rows
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.context import make_eval_context
from tests.helpers.models import D_MODEL, blocks_run, tiny_llama
from tests.helpers.saes import SAE_KINDS, negate_latent, random_sae
from tests.helpers.tokenizer import SPECIAL_TOKENS, tiny_tokenizer

AXIS, OTHER = (next(a for a in AXES if a.name == name) for name in ("temperature", "life"))
LAYER = 1
D_SAE = 24


def _word_tokenizer():
    """A word-level tokenizer over every word of the two test axes (each pole word one token)."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers

    words: list[str] = []
    for axis in (AXIS, OTHER):
        for pair in axis.words:
            for w in pair:
                words += [w, w.capitalize()]
        for text in sentences(axis):
            words += re.findall(r"\w+|[^\w\s]", text.replace("{}", ""))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS["bos"])}
    for w in ["<unk>", *words]:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return tiny_tokenizer("bos", core=core)


def planted_model():
    """Tiny Llama whose pole-A words embed at +3 axis, pole-B words at -3 axis (plus noise); the contrast
    direction u and midpoint m of its layer-1 activations on the temperature pairs."""
    tok = _word_tokenizer()
    model, tok = tiny_llama(tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(2, D_MODEL, generator=g), dim=-1)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        for d, axis in zip(dirs, (AXIS, OTHER)):
            for a, b in axis.words:
                for word, sign in ((a, 1.0), (b, -1.0)):
                    for form in (word, word.capitalize()):
                        (idx,) = tok.encode(form, add_special_tokens=False)
                        emb[idx] = 3.0 * sign * d + 0.3 * torch.randn(D_MODEL, generator=g) / D_MODEL**0.5
    adapter = ModelAdapter(model, tok)
    instances, _ = build_instances(tok, [AXIS.name], ("context",))
    x_a, x_b = pair_activations(adapter, LAYER, instances)
    u = torch.nn.functional.normalize((x_a - x_b).mean(0), dim=0)
    mid = float(((x_a + x_b) / 2).mean(0) @ u)
    return adapter, u, mid


@pytest.fixture(scope="module")
def planted():
    return planted_model()


def _ctx(adapter) -> EvalContext:
    return make_eval_context(adapter, layer=LAYER, model_key="tiny-bipolar", dataset="-")


def _sae(cls, cfg_cls, rows: list[tuple[torch.Tensor, float]], k: int = 3):
    """Planted latents (decoder row = encoder column = direction, encoder bias) then small random ones."""
    sae = cls(cfg_cls(d_in=D_MODEL, d_sae=D_SAE, k=k))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, D_MODEL, generator=g), dim=-1) * 0.05)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        for j, (direction, bias) in enumerate(rows):
            sae.W_dec[j] = direction
            sae.W_enc[:, j] = direction
            sae.b_enc[j] = bias
    return sae


CFG = BidirectionalEvalConfig(model_name="tiny-bipolar", axes=[AXIS.name, OTHER.name], n_bootstrap=300)


def _axis(out, name=AXIS.name, context="context"):
    return next(d for d in out.eval_result_details if d.axis == name and d.context == context)


def test_a_planted_bipolar_latent_is_found_and_the_shuffled_control_is_near_zero(planted):
    adapter, u, mid = planted
    sae = _sae(AbsTopKSAE, AbsTopKSAEConfig, [(u, -mid)])
    out = run_bidirectional(_ctx(adapter), {"abs": sae}, CFG)["abs"]
    axis = _axis(out)
    assert axis.best_latent == 0 and axis.n_pairs >= 40
    assert axis.sign_consistency > 0.95 and axis.share > 0.8 and axis.coverage == 1.0
    assert axis.mean_a > 0 > axis.mean_b
    assert axis.ci_low > 0.7 and axis.ci_low <= axis.bidirectional_share <= axis.ci_high
    assert axis.control_share < 0.2 and axis.control_ci_high < axis.ci_low
    assert axis.control_sign_consistency < 0.8  # the swap breaks the planted latent's orientation
    m = out.eval_result_metrics.bidirectional
    assert m.n_axes == 2 and m.n_pairs_alone > 0 and m.bidirectional_share_alone is not None
    assert m.frac_axes_bidirectional >= 0.5  # the planted axis is above its control
    alone = _axis(out, context="alone")
    assert alone.best_latent == 0 and alone.sign_consistency == 1.0


def test_a_non_negative_sae_scores_zero_as_one_latent_and_is_reported_split(planted):
    adapter, u, mid = planted
    sae = _sae(TopKSAE, TopKSAEConfig, [(u, -mid), (-u, mid)])
    out = run_bidirectional(_ctx(adapter), {"topk": sae}, CFG)["topk"]
    axis = _axis(out)
    assert axis.sign_consistency == 0.0 and axis.bidirectional_share == 0.0  # z >= 0: no opposite signs
    assert axis.split_latents == [0, 1] and axis.split_share > 0.8
    assert out.eval_result_metrics.bidirectional.frac_axes_bidirectional == 0.0


def test_scores_are_invariant_to_negating_a_signed_latent(planted):
    adapter, u, mid = planted
    sae = _sae(AbsTopKSAE, AbsTopKSAEConfig, [(u, -mid)])
    ref = run_bidirectional(_ctx(adapter), {"a": sae}, CFG)["a"]
    for j in (0, 5):
        flipped = run_bidirectional(_ctx(adapter), {"a": negate_latent(sae, j)}, CFG)["a"]
        assert flipped.eval_result_metrics == ref.eval_result_metrics
        assert flipped.eval_result_details == ref.eval_result_details


def test_every_axis_writes_at_least_40_sentence_pairs_and_the_one_token_rule_drops_the_rest():
    for axis in AXES:
        assert len(axis.words) * len(sentences(axis)) >= 40, axis.name
    assert len(AXES) >= 18
    # a character tokenizer: a pair is kept only if its words differ in one character, never at a special position
    for start in ("bos", "none"):
        tok = tiny_tokenizer(start)
        instances, counts = build_instances(tok, None, CONTEXTS)
        for inst in instances:
            a, b = inst.ids
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1 and a[inst.position] != b[inst.position]
            assert inst.position > 0
        kept = sum(c[ctx]["kept"] for c in counts.values() for ctx in CONTEXTS)
        written = sum(c[ctx]["written"] for c in counts.values() for ctx in CONTEXTS)
        assert kept == len(instances) < written


def test_the_word_tokenizer_keeps_every_planted_pair():
    tok = _word_tokenizer()
    instances, counts = build_instances(tok, [AXIS.name], CONTEXTS)
    assert counts[AXIS.name]["context"]["kept"] == counts[AXIS.name]["context"]["written"] >= 40
    assert 0 < counts[AXIS.name]["alone"]["kept"] < counts[AXIS.name]["alone"]["written"]  # " hot" == "hot" here
    assert {inst.position for inst in instances if inst.context == "alone"} == {1}  # right after <bos>
    for inst in instances:
        a, b = inst.ids
        assert len(a) == len(b) and [i for i, (x, y) in enumerate(zip(a, b)) if x != y] == [inst.position]


def test_unknown_axis_or_context_is_a_user_error(planted):
    adapter, _, _ = planted
    with pytest.raises(UserError, match="unknown bipolar axis"):
        run_bidirectional(_ctx(adapter), {}, BidirectionalEvalConfig(axes=["north/south"]))
    with pytest.raises(UserError, match="unknown bidirectional context"):
        run_bidirectional(_ctx(adapter), {}, BidirectionalEvalConfig(contexts=["poem"]))


def test_a_consistent_latent_with_a_small_share_clears_the_control_but_does_not_hold_the_axis(planted):
    adapter, u, mid = planted
    sae = _sae(AbsTopKSAE, AbsTopKSAEConfig, [(u, -mid)])
    with torch.no_grad():
        sae.W_dec[0] *= 0.05  # same signs, a twentieth of the contrast reconstructed
    out = run_bidirectional(_ctx(adapter), {"abs": sae}, CFG)["abs"]
    axis = _axis(out)
    assert axis.best_latent == 0 and axis.sign_consistency > 0.95 and 0.03 < axis.share < 0.07
    assert axis.ci_low > axis.control_ci_high
    assert out.eval_result_metrics.bidirectional.frac_axes_bidirectional == 0.0


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_the_effective_decoder_is_each_latents_unit_contribution(kind):
    """Bidirectional weights contrasts by `pooled.decoder_rows`, the one definition of decode(e_j) - decode(0)."""
    sae = random_sae(kind, d_sae=50)
    with torch.no_grad():
        sae.b_dec.normal_()  # cancels: decode is affine
    assert torch.allclose(torch.from_numpy(decoder_rows(sae, chunk=16)).float(), sae.W_dec, atol=1e-5)


def test_a_second_run_with_a_new_sae_takes_the_pair_activations_from_the_pass_cache(planted, tmp_path):
    from abstopk_eval.models.pass_cache import PassCache, pass_identity

    adapter, u, mid = planted
    cached = ModelAdapter(adapter.model, adapter.tokenizer)
    cached.pass_cache = PassCache(tmp_path, pass_identity({"key": "tiny-bipolar", "weights": "test"}, "cpu"))
    first = _sae(AbsTopKSAE, AbsTopKSAEConfig, [(u, -mid)])
    run_bidirectional(_ctx(cached), {"a": first}, CFG)
    new = random_sae("abstopk", seed=4, d_in=D_MODEL, d_sae=D_SAE)
    with blocks_run(cached) as calls:
        warm = run_bidirectional(_ctx(cached), {"b": new}, CFG)["b"]
    assert not calls and cached.pass_cache.hits >= 1
    assert warm.eval_result_details == run_bidirectional(_ctx(adapter), {"b": new}, CFG)["b"].eval_result_details
