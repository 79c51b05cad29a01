"""RAVEL on a tiny local model: end to end, sign-flip invariance, user errors (see `tests.helpers.knowledge` for
the facts the tiny model knows)."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig

from abstopk_eval.data import facts
from abstopk_eval.errors import UserError
from abstopk_eval.evals.ravel.main import attribution_scores, run_ravel, select_latents
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
