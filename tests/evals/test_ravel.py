"""RAVEL and unlearning on a tiny local model: end to end, sign-flip invariance, the clamp rule, user errors.

A random tiny model knows no real facts, so the tests register entity types whose attribute values are the
model's own greedy answers to the first template (the model "knows" them by construction); the other
templates are answered right or wrong by chance, which exercises the filtering.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from abstopk_eval.data import facts
from abstopk_eval.data.facts import EntityData, FactDomain, Template
from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.knowledge import PromptRunner, encode, pad_left
from abstopk_eval.evals.ravel.eval_config import RavelEvalConfig
from abstopk_eval.evals.ravel.main import run_ravel
from abstopk_eval.evals.unlearning.eval_config import UnlearningEvalConfig
from abstopk_eval.evals.unlearning.main import clamp_latents, run_unlearning
from abstopk_eval.models.adapter import ModelAdapter
from tests.evals.test_core import _random_sae, negate_latent
from tests.helpers.models import D_MODEL, VOCAB, tiny_llama

LAYER = 1
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def adapter() -> ModelAdapter:
    model, tok = tiny_llama(seed=3)
    with torch.no_grad():  # sharper weights, so that the next token depends on the entity
        for p in model.parameters():
            p.mul_(8.0) if p.dim() > 1 else None
    return ModelAdapter(model, tok)


def _entities(n: int, offset: int) -> list[str]:
    return [
        LETTERS[(i * 7 + offset) % 26] + LETTERS[(i * 11 + 3 * offset) % 26] + LETTERS[(i * 5 + offset) % 26]
        for i in range(n)
    ]


def _own_answers(adapter: ModelAdapter, name: str, attrs: dict[str, list[str]], entities: list[str]) -> EntityData:
    """Entity type whose values are the model's greedy answers to each attribute's first template."""
    tok, runner = adapter.tokenizer, PromptRunner(adapter, LAYER)
    templates = {a: tuple(Template(t, "json") for t in ts) for a, ts in attrs.items()}
    values: dict[str, dict[str, str]] = {e: {} for e in entities}
    for a, ts in templates.items():
        ids, mask = pad_left([encode(tok, ts[0].fill(e), tok.bos_token_id) for e in entities], tok.pad_token_id)
        preds = runner.logits(ids, mask).argmax(-1).tolist()
        for e, p in zip(entities, preds):
            values[e][a] = tok.decode([p])
    return EntityData(name, tuple(attrs), values, templates, source="tiny model", license="-", derivation="test")


@pytest.fixture(scope="module")
def registered(adapter):
    """Tiny entity types and fact domains, registered for the module's tests and removed afterwards."""
    things = _own_answers(
        adapter,
        "tiny_things",
        {
            "Color": ['{"thing": "%s", "color": "', '%s has color "'],
            "Shape": ['{"thing": "%s", "shape": "', '%s has shape "'],
        },
        sorted(set(_entities(32, 0))),
    )
    tools = _own_answers(
        adapter, "tiny_tools", {"Use": ['{"tool": "%s", "use": "', 'the %s is for "']}, sorted(set(_entities(24, 5)))
    )
    added_types = {"tiny_things": lambda: things, "tiny_tools": lambda: tools}
    added_domains = {
        "tiny-color": FactDomain("tiny-color", "tiny_things", "Color", "test"),
        "tiny-use": FactDomain("tiny-use", "tiny_tools", "Use", "test"),
    }
    facts.ENTITY_TYPES.update(added_types)
    facts.FACT_DOMAINS.update(added_domains)
    yield
    for k in added_types:
        facts.ENTITY_TYPES.pop(k, None)
    for k in added_domains:
        facts.FACT_DOMAINS.pop(k, None)


def _context(adapter: ModelAdapter) -> EvalContext:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (8, 24), generator=g)
    tokens[:, 0] = adapter.bos_token_id
    acts = adapter.activations(tokens, LAYER)[:, 1:].reshape(-1, D_MODEL)
    return EvalContext(
        adapter=adapter,
        model_key="tiny",
        model_name="tiny",
        layer=LAYER,
        eval_tokens=tokens,
        heldout_activations=lambda: acts,
        dataset="random tokens",
        provenance={"model": "tiny"},
    )


def _ravel_config(**kw) -> RavelEvalConfig:
    base = dict(
        model_name="tiny",
        layer=LAYER,
        entity_attribute_selection={"tiny_things": ["Color", "Shape"]},
        max_candidate_entities=32,
        top_n_entities=32,
        num_train_pairs_per_attribute=8,
        num_pairs_per_attribute=10,
        min_pairs_per_attribute=2,
        n_latents_grid=[2, 8],
        llm_batch_size=16,
        chance_margin=0.0,
    )
    return RavelEvalConfig(**{**base, **kw})


def _unlearning_config(**kw) -> UnlearningEvalConfig:
    base = dict(
        model_name="tiny",
        layer=LAYER,
        forget_set="facts",
        forget_domains=["tiny-color"],
        retain_domains=["tiny-use"],
        max_entities_per_domain=32,
        min_forget_facts=4,
        max_forget_facts=16,
        max_retain_facts_per_domain=12,
        retain_thresholds=[0.05, 0.5],
        n_features_list=[3],
        multipliers=[1.0, 8.0],
        n_retain_tokens=512,
        llm_batch_size=16,
    )
    return UnlearningEvalConfig(**{**base, **kw})


def _flat(output) -> dict:
    d = asdict(output)
    return {"metrics": d["eval_result_metrics"], "details": d["eval_result_details"]}


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


def test_ravel_end_to_end_and_sign_flip_invariance(adapter, registered):
    ctx, cfg = _context(adapter), _ravel_config()
    sae = _random_sae("abstopk", seed=1)
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
    assert _flat(out["orig"]) == _flat(first)
    a, b = _flat(out["orig"]), _flat(out["flip"])
    assert a == b
    assert (
        out["flip"].eval_result_unstructured["attributes"][0]["selected_latents"]
        == first.eval_result_unstructured["attributes"][0]["selected_latents"]
    )


def test_unlearning_end_to_end_and_sign_flip_invariance(adapter, registered):
    ctx, cfg = _context(adapter), _unlearning_config()
    sae = _random_sae("abstopk", seed=2)
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
    assert _flat(out["flip"]) == _flat(out["orig"]) == _flat(first)
    assert (
        out["flip"].eval_result_unstructured["selected_latents"] == first.eval_result_unstructured["selected_latents"]
    )


def test_user_errors(adapter, registered):
    ctx = _context(adapter)
    sae = _random_sae("abstopk", seed=1)
    with pytest.raises(UserError, match="unknown entity type 'planets'"):
        facts.load_entities("planets")
    with pytest.raises(UserError, match="unknown entity type"):
        run_ravel(ctx, {"s": sae}, _ravel_config(entity_attribute_selection={"planets": ["Mass", "Moons"]}))
    with pytest.raises(UserError, match="has no attribute"):
        run_ravel(ctx, {"s": sae}, _ravel_config(entity_attribute_selection={"tiny_things": ["Color", "Smell"]}))
    with pytest.raises(UserError, match="at least two attributes"):
        run_ravel(ctx, {"s": sae}, _ravel_config(entity_attribute_selection={"tiny_things": ["Color"]}))
    with pytest.raises(UserError, match="forget set too small after filtering"):
        run_unlearning(ctx, {"s": sae}, _unlearning_config(min_forget_facts=1000))
    with pytest.raises(UserError, match="unknown fact domain"):
        run_unlearning(ctx, {"s": sae}, _unlearning_config(forget_domains=["moon-phases"]))
    with pytest.raises(UserError, match="unknown forget_set"):
        run_unlearning(ctx, {"s": sae}, _unlearning_config(forget_set="wmdp"))


@pytest.mark.parametrize("builder", ["llama", "gemma3"])
def test_resumed_forward_matches_the_full_spliced_pass(builder):
    from tests.helpers.models import TINY_BUILDERS

    model, tok = TINY_BUILDERS[builder](seed=0)
    ad = ModelAdapter(model, tok)
    runner = PromptRunner(ad, LAYER)
    ids, mask = pad_left(
        [encode(tok, t, tok.bos_token_id) for t in ("hello there", "a b", "sparse autoencoders")], tok.pad_token_id
    )
    resid = runner.residual(ids, mask) * 1.5  # an edited residual
    full = runner.logits(ids, mask, fn=lambda h: resid)
    fast = runner.logits_from_residual(resid, ids, mask)  # verifies on first use, keeps resuming if equal
    assert runner.resume
    assert torch.allclose(runner.logits_from_residual(resid, ids, mask), full, atol=1e-4, rtol=1e-4)
    assert torch.allclose(fast, full, atol=1e-4, rtol=1e-4)
    assert len(ad.layers()) == 3 and all(type(b).__name__ != "_PassThrough" for b in ad.layers())


def test_real_fact_data_loads():
    city = facts.load_entities("city", max_entities=200)
    assert city.values["Tokyo"] == {"Country": "Japan", "Continent": "Asia", "Language": "Japanese"}
    assert len(city.values) == 200 and all(len(city.templates[a]) >= 3 for a in city.attributes)
    assert facts.load_fact_domain("country-capital").values["France"] == {"Capital": "Paris"}
    nobel = facts.load_entities("nobel_prize_winner")
    assert nobel.values["Albert Einstein"] == {"Field": "Physics", "Country of Birth": "Germany"}
    assert "Linus Carl Pauling" not in nobel.values and "Marie Curie, née Sklodowska" not in nobel.values  # two fields
    assert "Pierre Curie" in nobel.values
    assert facts.load_fact_domain("element-symbol").values["Gold"] == {"Symbol": "Au"}
    assert len(facts.mmlu_questions(["college biology"])) == 144
    with pytest.raises(UserError, match="unknown MMLU subject"):
        facts.mmlu_questions(["astrology"])
