"""A tiny model that "knows" facts, for the RAVEL and unlearning tests.

A random tiny model knows no real facts, so `tiny_fact_domains` registers entity types whose attribute values are
the model's own greedy answers to the first template (the model "knows" them by construction); the other
templates are answered right or wrong by chance, which exercises the filtering.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from abstopk_eval.data import facts
from abstopk_eval.data.facts import EntityData, FactDomain, Template
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.knowledge import PromptRunner, encode
from abstopk_eval.evals.ravel.eval_config import RavelEvalConfig
from abstopk_eval.evals.unlearning.eval_config import UnlearningEvalConfig
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.batching import pad_sequences
from tests.helpers.context import make_eval_context, random_tokens
from tests.helpers.models import D_MODEL, tiny_llama

LAYER = 1
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def knowledge_adapter() -> ModelAdapter:
    """The tiny Llama (seed 3) with its matrices scaled up, so that the next token depends on the entity."""
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
        ids, mask = pad_sequences(
            [encode(tok, ts[0].fill(e), tok.bos_token_id) for e in entities], tok.pad_token_id, side="left"
        )
        preds = runner.logits(ids, mask).argmax(-1).tolist()
        for e, p in zip(entities, preds):
            values[e][a] = tok.decode([p])
    return EntityData(name, tuple(attrs), values, templates, source="tiny model", license="-", derivation="test")


@contextmanager
def tiny_fact_domains(adapter: ModelAdapter) -> Iterator[None]:
    """Entity types "tiny_things" (Color, Shape) and "tiny_tools" (Use) and fact domains "tiny-color" and "tiny-use",
    answered by `adapter`'s model, registered inside the block and removed afterwards."""
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
    try:
        yield
    finally:
        for k in added_types:
            facts.ENTITY_TYPES.pop(k, None)
        for k in added_domains:
            facts.FACT_DOMAINS.pop(k, None)


def knowledge_context(adapter: ModelAdapter) -> EvalContext:
    """A context at LAYER with 8 random held-out sequences (and their activations)."""
    tokens = random_tokens(8, 24, bos_token_id=adapter.bos_token_id)
    acts = adapter.activations(tokens, LAYER)[:, 1:].reshape(-1, D_MODEL)
    return make_eval_context(
        adapter, layer=LAYER, eval_tokens=tokens, heldout_activations=acts, dataset="random tokens"
    )


def metrics_and_details(output: Any) -> dict:
    """An evaluation output's metrics and per-item details as plain data (what sign flips must not change)."""
    d = asdict(output)
    return {"metrics": d["eval_result_metrics"], "details": d["eval_result_details"]}


def tiny_ravel_config(**kw) -> RavelEvalConfig:
    """A RAVEL config sized for the tiny entity types of `tiny_fact_domains` (fields in `kw` override)."""
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


def tiny_unlearning_config(**kw) -> UnlearningEvalConfig:
    """An unlearning config sized for the tiny fact domains of `tiny_fact_domains` (fields in `kw` override)."""
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
