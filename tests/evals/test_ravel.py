"""RAVEL on a tiny local model: end to end, sign-flip invariance, user errors (see `tests.helpers.knowledge` for
the facts the tiny model knows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig

from abstopk_eval.data import facts
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bootstrap import (
    INTERVALS_KEY,
    PAIRED_SAMPLES_KEY,
    pairable,
    paired_difference_samples,
    sample_intervals,
)
from abstopk_eval.evals.ravel.main import (
    AttributeSet,
    Pair,
    Prompt,
    attribution_scores,
    pair_unit,
    resampled_scores,
    run_ravel,
    select_latents,
)
from tests.helpers.knowledge import (
    knowledge_context,
    metrics_and_details,
    tiny_ravel_config,
)
from tests.helpers.saes import negate_latent, random_sae


def test_ravel_end_to_end_and_sign_flip_invariance(knowledge_model, knowledge_facts):
    ctx, cfg = knowledge_context(knowledge_model), tiny_ravel_config()
    sae = random_sae("abstopk", seed=1)
    first = run_ravel(ctx, {"orig": sae}, cfg)["orig"]
    m = first.eval_result_metrics
    assert 0.0 <= m.ravel.disentanglement_score <= 1.0
    assert m.ravel.disentanglement_score == pytest.approx((m.ravel.cause_score + m.ravel.isolation_score) / 2)
    assert len(first.eval_result_details) == 2 and m.knowledge.n_attributes >= 1 and m.knowledge.n_entities > 0
    assert all(d.base_accuracy > 0.3 for d in first.eval_result_details)
    assert {d.attribute for d in first.eval_result_details} == {"Color", "Shape"}
    assert all(d.n_cause_pairs > 0 and d.n_isolation_pairs > 0 for d in first.eval_result_details)
    assert first.provenance["sae_id"] == "orig"
    selected = [j for rec in first.eval_result_unstructured["attributes"] for j in rec["selected_latents"]]
    assert selected, "no latent was interchanged"
    # negate an interchanged latent that fires negatively somewhere: every score is unchanged
    out = run_ravel(ctx, {"orig": sae, "flip": negate_latent(sae, selected[0])}, cfg)
    assert metrics_and_details(out["orig"]) == metrics_and_details(first)
    a, b = metrics_and_details(out["orig"]), metrics_and_details(out["flip"])
    assert a == b
    assert (
        out["flip"].eval_result_unstructured["attributes"][0]["selected_latents"]
        == first.eval_result_unstructured["attributes"][0]["selected_latents"]
    )
    # ... and so is every bootstrap sample
    assert (
        out["flip"].eval_result_unstructured[PAIRED_SAMPLES_KEY] == first.eval_result_unstructured[PAIRED_SAMPLES_KEY]
    )


def test_bootstrap_samples_pair_across_saes(knowledge_model, knowledge_facts):
    """Resamples of base entities that do not depend on the SAE: two SAEs' samples pair, the same SAE twice
    differs by exactly 0 in every sample, and each score lies in its own interval."""
    ctx, cfg = knowledge_context(knowledge_model), tiny_ravel_config(n_bootstrap=200)
    sae = random_sae("abstopk", seed=1)
    out = run_ravel(ctx, {"a": sae, "b": random_sae("topk", seed=2), "a again": sae}, cfg)
    records = {sid: o.eval_result_unstructured[PAIRED_SAMPLES_KEY] for sid, o in out.items()}
    rec = records["a"]
    assert rec["unit"].startswith("base entity") and rec["n_units"] > 4 and rec["seed"] == cfg.bootstrap_seed
    for sid, o in out.items():
        unstructured = o.eval_result_unstructured
        assert unstructured[INTERVALS_KEY] == sample_intervals(records[sid])
        for metric, (low, high) in unstructured[INTERVALS_KEY].items():
            assert len(records[sid]["samples"][metric]) == 200
            assert low <= getattr(o.eval_result_metrics.ravel, metric) <= high
    for metric in ("disentanglement_score", "cause_score", "isolation_score"):
        assert pairable(records["a"], records["b"], metric)
        assert np.all(paired_difference_samples(records["a"], records["a again"], metric) == 0.0)
    assert not np.all(paired_difference_samples(records["a"], records["b"], "disentanglement_score") == 0.0)


def test_resampled_scores_with_unit_counts_are_the_point_estimate():
    """Every count 1 reproduces the scores (hit rates, then means over attributes and entity types); an entity
    drawn twice weighs all its pairs twice."""

    def prompt(etype: str, entity: str) -> Prompt:
        return Prompt(etype, "A", 0, entity, "v", [1, 2], 0, frozenset({3}))

    def aset(etype: str, attr: str, specs: list[tuple[str, str]]) -> AttributeSet:
        s = AttributeSet(etype, attr, 1.0, 0.0, 1)
        s.test = [Pair(prompt(etype, e), prompt(etype, "src"), frozenset({3}), kind) for e, kind in specs]
        return s

    sets = [
        aset("t", "A", [("x", "cause"), ("y", "cause"), ("x", "isolation"), ("y", "isolation")]),
        aset("t", "B", [("x", "cause"), ("y", "isolation")]),
        aset("u", "C", [("z", "cause"), ("z", "isolation")]),
    ]
    hits = [[True, False, True, True], [False, True], [True, False]]
    units = sorted({pair_unit(p) for s in sets for p in s.test})
    assert units == ["t/x", "t/y", "u/z"]
    counts = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    got = resampled_scores(sets, hits, units, counts)
    # t: A cause 1/2, iso 1; B cause 0, iso 1 -> cause 0.25, iso 1; u: cause 1, iso 0 -> means over types
    assert got["cause_score"].tolist() == pytest.approx([(0.25 + 1) / 2, (0.5 + 1) / 2])
    # second resample: y absent, so B's isolation (only y) is empty -> NaN, skipped
    assert got["isolation_score"].tolist() == pytest.approx([(1 + 0) / 2, (1 + 0) / 2])
    assert got["disentanglement_score"][0].item() == pytest.approx((0.625 + 0.5) / 2)
    assert got["disentanglement_score"][1].item() == pytest.approx(((1 + 1) / 2 / 1 + 0.5) / 2)


def test_user_errors(knowledge_model, knowledge_facts):
    ctx = knowledge_context(knowledge_model)
    sae = random_sae("abstopk", seed=1)
    with pytest.raises(UserError, match="unknown entity type 'planets'"):
        facts.load_entities("planets")
    with pytest.raises(UserError, match="unknown entity type"):
        run_ravel(ctx, {"s": sae}, tiny_ravel_config(entity_attribute_selection={"planets": ["Mass", "Moons"]}))
    with pytest.raises(UserError, match="has no attribute"):
        run_ravel(ctx, {"s": sae}, tiny_ravel_config(entity_attribute_selection={"tiny_things": ["Color", "Smell"]}))
    with pytest.raises(UserError, match="at least two attributes"):
        run_ravel(ctx, {"s": sae}, tiny_ravel_config(entity_attribute_selection={"tiny_things": ["Color"]}))


def test_selection_ranks_a_latent_that_carries_the_value_in_its_sign_first():
    """Latent 0 is -1 on the base and +1 on the source entity (the attribute value in its sign), latent 1 goes from
    0 to +1, latent 2 does not change; the target's loss falls along both decoder rows. Interchanging latent 0
    moves twice as far, so it ranks first, and negating it (z and W_dec row) changes no score."""
    sae = AbsTopKSAE(AbsTopKSAEConfig(d_in=3, d_sae=3, k=3))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(3))
    z_base = torch.tensor([[-1.0, 0.0, 0.5]]).repeat(4, 1)
    z_src = torch.tensor([[1.0, 1.0, 0.5]]).repeat(4, 1)
    grads = torch.tensor([[-1.0, -1.0, 0.3]]).repeat(4, 1)
    scores = attribution_scores(sae, z_base, z_src, grads)
    assert scores.tolist() == pytest.approx([8.0, 4.0, 0.0])
    assert select_latents(scores, 3).tolist() == [0, 1]
    flip = torch.tensor([-1.0, 1.0, 1.0])
    flipped = negate_latent(sae, 0)
    assert torch.equal(attribution_scores(flipped, z_base * flip, z_src * flip, grads), scores)
