"""Unlearning on a tiny local model: the clamp rule, end to end, sign-flip invariance, user errors (see
`tests.helpers.knowledge` for the facts the tiny model knows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig

from abstopk_eval.data.facts import load_fact_domain
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bootstrap import INTERVALS_KEY, PAIRED_SAMPLES_KEY, pairable, paired_difference_samples
from abstopk_eval.evals.unlearning.eval_config import UnlearningEvalConfig
from abstopk_eval.evals.unlearning.main import (
    clamp_latents,
    latent_statistics,
    run_unlearning,
    top_features,
    unlearning_score_samples,
)
from tests.helpers.knowledge import (
    knowledge_context,
    metrics_and_details,
    tiny_unlearning_config,
)
from tests.helpers.saes import negate_latent, random_sae


def test_clamp_pushes_a_latent_against_the_sign_it_fired_with():
    z = torch.tensor([[0.0, 2.0, -3.0, 0.5], [1.0, 0.0, -0.5, 0.0]])
    latents = torch.tensor([1, 2])
    out = clamp_latents(z, latents, multiplier=4.0, scale=torch.tensor([0.5, 2.0]))
    assert out[0, 1] == -2.0  # fired positive -> -m * s (sae_bench's -m, scaled)
    assert out[0, 2] == 8.0  # fired negative (AbsTopK) -> +m * s
    assert out[1, 2] == 8.0
    assert out[1, 1] == 0.0  # did not fire: stays 0
    assert torch.equal(out[:, [0, 3]], z[:, [0, 3]])  # unselected latents untouched
    assert torch.equal(clamp_latents(-z, latents, 4.0, torch.tensor([0.5, 2.0]))[:, latents], -out[:, latents])


def test_unlearning_end_to_end_and_sign_flip_invariance(knowledge_model, knowledge_facts):
    ctx, cfg = knowledge_context(knowledge_model), tiny_unlearning_config()
    sae = random_sae("abstopk", seed=2)
    first = run_unlearning(ctx, {"orig": sae}, cfg)["orig"]
    m = first.eval_result_metrics
    assert 0.0 <= m.unlearning.unlearning_score <= 1.0
    assert m.knowledge.n_forget_facts >= 4 and m.knowledge.forget_base_accuracy > 0.3
    assert len(first.eval_result_details) == 2 * 1 * 2  # thresholds x n_features x multipliers
    assert first.eval_result_unstructured["mode"] == "facts"
    assert m.best_intervention.forget_accuracy_before == pytest.approx(1.0)
    chosen = first.eval_result_unstructured["selected_latents"]["0.5"]
    assert chosen
    j = chosen[0]
    out = run_unlearning(ctx, {"orig": sae, "flip": negate_latent(sae, j)}, cfg)
    assert metrics_and_details(out["flip"]) == metrics_and_details(out["orig"]) == metrics_and_details(first)
    assert (
        out["flip"].eval_result_unstructured["selected_latents"] == first.eval_result_unstructured["selected_latents"]
    )
    samples = [o.eval_result_unstructured[PAIRED_SAMPLES_KEY] for o in (first, out["orig"], out["flip"])]
    assert samples[0] == samples[1] == samples[2]


def test_bootstrap_samples_pair_across_saes(knowledge_model, knowledge_facts):
    """Two SAEs in one call share the resamples; the same SAE twice differs by exactly 0; the point estimate lies in
    its interval."""
    ctx = knowledge_context(knowledge_model)
    sae = random_sae("abstopk", seed=2)
    saes = {"a": sae, "a_again": sae, "b": random_sae("topk", seed=4)}
    outs = run_unlearning(ctx, saes, tiny_unlearning_config(n_bootstrap=200, multipliers=[1.0, 8.0, 64.0]))
    rec = {k: o.eval_result_unstructured[PAIRED_SAMPLES_KEY] for k, o in outs.items()}
    knowledge = outs["a"].eval_result_metrics.knowledge
    assert rec["a"]["n_units"] == knowledge.n_forget_facts + knowledge.n_retain_facts
    assert pairable(rec["a"], rec["b"], "unlearning_score") and len(rec["a"]["samples"]["unlearning_score"]) == 200
    assert (paired_difference_samples(rec["a"], rec["a_again"], "unlearning_score") == 0).all()
    for out in outs.values():
        low, high = out.eval_result_unstructured[INTERVALS_KEY]["unlearning_score"]
        assert low <= out.eval_result_metrics.unlearning.unlearning_score <= high
        assert 0.0 <= low <= high <= 1.0


def test_score_samples_choose_the_intervention_again_on_each_resample():
    """Entry A forgets more but loses retain question 1; entry B keeps both. On the full sets only B is within the
    bound (score 0.25); on a resample that drops retain question 1, A is within too (score 0.5)."""
    forget_base, retain_base = torch.ones(4, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    a = (torch.tensor([0, 0, 1, 1]).bool(), torch.tensor([1, 0]).bool())
    b = (torch.tensor([0, 1, 1, 1]).bool(), torch.tensor([1, 1]).bool())
    forget_counts = torch.ones(3, 4, dtype=torch.float64)
    forget_counts[2] = torch.tensor([0.0, 0.0, 2.0, 2.0])  # only questions that A and B both still answer
    retain_counts = torch.tensor([[1.0, 1.0], [2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    s = unlearning_score_samples(forget_base, retain_base, [a, b], 0.99, forget_counts, retain_counts)
    assert s.tolist() == pytest.approx([0.25, 0.5, 0.0])
    only_a = unlearning_score_samples(forget_base, retain_base, [a], 0.99, forget_counts, retain_counts)
    assert only_a.tolist() == pytest.approx([0.0, 0.5, 0.0])  # none within the bound on the full sets: 0
    assert (
        unlearning_score_samples(forget_base, retain_base, [], 0.99, forget_counts, retain_counts).tolist() == [0.0] * 3
    )


def test_default_sizes_evaluate_every_known_prompt(knowledge_model, knowledge_facts):
    """With the default caps every known held-out prompt of the tiny sets is evaluated (24 forget and 37 retain
    prompts with 10% of the entities selecting, more than the tiny config's caps of 16 and 12), and on the real
    data the default entity cap keeps every country of country-capital, whose held-out prompts (> 300, old cap 40)
    the forget cap does not cut."""
    default = UnlearningEvalConfig()
    caps = {
        f: getattr(default, f) for f in ("max_entities_per_domain", "max_forget_facts", "max_retain_facts_per_domain")
    }
    out = run_unlearning(
        knowledge_context(knowledge_model),
        {"s": random_sae("abstopk", seed=1)},
        tiny_unlearning_config(**caps, selection_fraction=0.1),
    )
    info, knowledge = out["s"].eval_result_unstructured, out["s"].eval_result_metrics.knowledge
    assert knowledge.n_forget_facts == info["forget_correct"] > 16
    assert knowledge.n_retain_facts == sum(v["correct"] for v in info["retain_by_source"].values()) > 12
    countries = load_fact_domain("country-capital")
    assert default.max_entities_per_domain >= len(countries.values) >= 200
    held_out = round((1 - default.selection_fraction) * len(countries.values)) * len(countries.templates["Capital"])
    assert default.max_forget_facts >= held_out > 300 > 40
    assert default.min_forget_facts >= 64 and 3 * default.max_retain_facts_per_domain >= 300


def test_user_errors(knowledge_model, knowledge_facts):
    ctx = knowledge_context(knowledge_model)
    sae = random_sae("abstopk", seed=1)
    with pytest.raises(UserError, match="forget set too small after filtering"):
        run_unlearning(ctx, {"s": sae}, tiny_unlearning_config(min_forget_facts=1000))
    with pytest.raises(UserError, match="unknown fact domain"):
        run_unlearning(ctx, {"s": sae}, tiny_unlearning_config(forget_domains=["moon-phases"]))
    with pytest.raises(UserError, match="unknown forget_set"):
        run_unlearning(ctx, {"s": sae}, tiny_unlearning_config(forget_set="wmdp"))


def test_top_features_is_sae_bench_get_top_features():
    from sae_bench.evals.unlearning.utils.feature_activation import get_top_features

    g = np.random.default_rng(0)
    forget, retain = g.random(50) * (g.random(50) < 0.8), g.random(50) * 0.02
    for thr in (0.005, 0.01, 0.02):
        ours = top_features(torch.tensor(forget), torch.tensor(retain), thr).tolist()
        assert ours == get_top_features(forget, retain, retain_threshold=thr).tolist() and len(ours) >= 5


def test_selection_counts_firing_of_either_sign():
    """Latent 0 fires +1 / -1 on alternate forget tokens, never on retain: it fires on every forget token, so it
    ranks above latent 1 (+1 on 70% of them; a `z > 0` count would give latent 0 only 50%). Latent 2 is +1 on
    forget and -1 on retain tokens: the clamp would act there too, so the retain filter (z != 0) drops it.
    Negating a latent changes nothing."""
    sae = AbsTopKSAE(AbsTopKSAEConfig(d_in=4, d_sae=4, k=4))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    forget, retain = torch.zeros(20, 4), torch.zeros(20, 4)
    forget[:, 0] = torch.tensor([1.0, -1.0]).repeat(10)
    forget[:14, 1] = 1.0
    forget[:, 2], retain[:, 2] = 1.0, -1.0
    retain[:, 3] = 1.0
    for s in (sae, negate_latent(sae, 0), negate_latent(sae, 2)):
        f_freq, _ = latent_statistics(s, forget)
        r_freq, _ = latent_statistics(s, retain)
        assert f_freq.tolist() == pytest.approx([1.0, 0.7, 1.0, 0.0])
        assert r_freq.tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])
        assert top_features(f_freq, r_freq, 0.01).tolist() == [0, 1]


def test_skipping_prompts_where_no_clamped_latent_fires_changes_no_outcome(knowledge_model, knowledge_facts):
    """The sweep runs the model only on prompts where a clamped latent fires; the rest keep their base answers.
    Against running every prompt: the same outcomes for latents firing on some prompts, on every prompt, and on
    none (then no prompt runs)."""
    from abstopk_eval.evals.knowledge import PromptRunner
    from abstopk_eval.evals.unlearning.main import _outcomes, _prepare, clamped_outcomes, firing_latents

    ctx, cfg = knowledge_context(knowledge_model), tiny_unlearning_config()
    runner = PromptRunner(ctx.adapter, ctx.layer)
    forget, retain, _rows, _info = _prepare(ctx, cfg, runner)
    sae = random_sae("abstopk", seed=2)
    a = ctx.adapter
    args = (a.pad_token_id, a.sequence_start, 3, a.d_model)
    for items in (forget.evaluated, retain.evaluated):
        base = torch.tensor([i.correct for i in items])  # the clean pass's answers, as run_unlearning takes them
        assert torch.equal(base, _outcomes(runner, None, items, None, 0.0, None, *args))  # = the resumed blocks'
        fires = firing_latents(sae, items, *args)
        counts = fires.sum(0)
        never = torch.nonzero(counts == 0).flatten()[:2]
        some = torch.nonzero((counts > 0) & (counts < len(items))).flatten()[:2]
        assert len(never) and len(some), "the planted SAE must have latents firing on none and on some prompts"
        for latents in (never, some, torch.arange(sae.cfg.d_sae)):
            scale = torch.ones(len(latents))
            full = _outcomes(runner, sae, items, latents, 10.0, scale, *args)
            skipped, ran = clamped_outcomes(runner, sae, items, base, fires, latents, 10.0, scale, *args)
            assert torch.equal(skipped, full)
            assert ran == int(fires[:, latents].any(1).sum())
        assert clamped_outcomes(runner, sae, items, base, fires, never, 10.0, torch.ones(2), *args)[1] == 0
