"""RAVEL: can one attribute of an entity be changed through the SAE latents without touching the others?

Following sae_bench's RAVEL (sae_bench/evals/ravel), on offline data (abstopk_eval.data.facts):

1. Candidate prompts: every (entity, attribute, template) of the selected entity types, for the
   `max_candidate_entities` most prominent entities. The model answers with its greedy next token; a prompt is
   correct when that token is the value's first token (sae_bench's MDBM criterion). The accuracy over all
   candidates is the model's **base accuracy**; the majority-value baseline is its **chance**.
2. Filtering as sae_bench: keep the `top_n_entities` entities with the most correct prompts, and only their
   correct prompts. Kept entities are split in halves: training pairs (latent selection) and evaluation pairs.
3. Pairs for attribute A (sae_bench's `get_prompt_pairs`): cause pairs (base and source prompts of A, entities
   whose A values start with different tokens; the target is the source's value in the base's template) and as
   many isolation pairs (base and source prompts of another attribute B; the target is the base's own B value).
4. Interchange at the entity's last token, layer L: z = SAE(r_base), z' = z with the selected latents set to
   the source's values (signed: AbsTopK latents keep their sign). The headline follows sae_bench's MDBM
   default and writes decode(z') there (the SAE error term is dropped); `ravel_other_error_mode` scores the
   same latents with the error kept, r' = r_base + decode(z') - decode(z) (`add_error` swaps the two). With
   the error kept, the base entity's attributes survive in the error term: on gemma-3-270m even interchanging
   every latent rarely changes the country of a city. The prediction is the greedy next token.
5. Latent selection (cheaper than sae_bench's learned binary mask, MDBM): a latent's score is the first-order
   decrease of MDBM's loss (cross-entropy of the target over cause and isolation training pairs) when its mask
   entry moves from 0, i.e. -sum_pairs (z_src - z_base)_j <W_dec[j], dL/dr>, with the gradient of the clean
   model at the entity position (one backward pass per pair, shared by every SAE). The `n_latents_grid` counts
   of top-scored latents are tried on the training pairs and the most disentangling one is evaluated.
6. Scores: cause = fraction of cause pairs now predicting the source's value, isolation = fraction of isolation
   pairs still predicting the base's value, disentanglement = their mean; averaged over an entity type's
   attributes, then over entity types (as sae_bench). Attributes whose base accuracy is not above chance by
   `chance_margin` are reported in the details but left out of the headline means (when any other remains).

Sizes (defaults): the 200 most prominent entities per type are candidates (sae_bench: RAVEL's whole entity
lists), the 160 with the most correct prompts are kept (sae_bench: top_n_entities 500), so up to 80 entities per
type are evaluation entities; 16 training and 96 evaluation cause pairs (and as many isolation pairs) per
attribute. Before, 60 / 60 entities and 12 / 32 pairs: about 30 evaluation entities per type, too few for
differences between SAEs to exceed the resampling noise.

Intervals: 95% percentile bootstrap intervals of disentanglement, cause and isolation (`bootstrap_ci95` in
eval_result_unstructured; samples under `bootstrap_samples`, `abstopk_eval.evals.bootstrap.paired_samples`).
The unit is the base entity of an evaluation pair: a resample draws the evaluation entities (of every type,
sorted by type and name) with replacement and weighs each pair by its base entity's count, so an entity's
pairs, which share its residuals, move together. The scores are recomputed under each resample exactly as the
point estimate (weighted hit rates, then means over attributes and entity types). The units and
`bootstrap_seed` do not depend on the SAE, so sample r of two SAEs used the same resample (paired differences).
The interval is conditional on the selected latents, the entity split and the sampled pairs: latent selection
on the training pairs is not repeated per resample.

Negating a latent (encoder column, bias, decoder row) negates z_j and W_dec[j] together, so every product
above, every intervention and every score is unchanged (tests/evals/test_ravel.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sae_bench.evals.ravel.eval_output import RAVELMetricResults
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from abstopk_eval.data.canonical import ravel_entities
from abstopk_eval.data.facts import EntityData, load_entities
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bootstrap import (
    INTERVALS_KEY,
    PAIRED_SAMPLES_KEY,
    paired_samples,
    resample_counts,
    sample_intervals,
)
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.knowledge import PromptRunner, encode, entity_last_position, value_token_ids
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.evals.ravel.eval_config import RavelEvalConfig
from abstopk_eval.evals.ravel.eval_output import (
    RavelEvalOutput,
    RavelKnowledgeMetrics,
    RavelMetricCategories,
    RavelResultDetail,
)
from abstopk_eval.models.batching import length_batches, pad_sequences
from abstopk_eval.models.pass_cache import cached_pass, tensor_digest

log = logging.getLogger("abstopk_eval")
EVAL_NAME = "ravel"
GRADS_KIND = "ravel-grads"


@dataclass
class Prompt:
    entity_type: str
    attribute: str
    template: int
    entity: str
    value: str
    ids: list[int]
    pos: int
    """Index of the entity's last token in ids."""
    targets: frozenset[int]
    correct: bool = False
    resid: Tensor | None = None
    """Residual after block L, [len(ids), d_model] (kept prompts only)."""


@dataclass
class Pair:
    base: Prompt
    source: Prompt
    targets: frozenset[int]
    kind: str
    """'cause' or 'isolation'."""


@dataclass
class AttributeSet:
    entity_type: str
    attribute: str
    base_accuracy: float
    chance_accuracy: float
    n_candidates: int
    train: list[Pair] = field(default_factory=list)
    test: list[Pair] = field(default_factory=list)
    grads: Tensor | None = None
    """dL/dr at the base entity position for each training pair, [n_train, d_model]."""


# ---------------------------------------------------------------------------------------------- prompts


def _build_prompts(data: EntityData, tokenizer: Any, bos: int | None) -> list[Prompt]:
    prompts = []
    for entity, values in data.values.items():
        for attr in data.attributes:
            for ti, template in enumerate(data.templates[attr]):
                ids = encode(tokenizer, template.fill(entity), bos)
                pos = entity_last_position(tokenizer, template, entity, bos, ids)
                targets = value_token_ids(tokenizer, template, values[attr])
                if targets and 0 <= pos < len(ids) - 1:
                    prompts.append(Prompt(data.entity_type, attr, ti, entity, values[attr], ids, pos, targets))
    return prompts


def _answer_all(runner: PromptRunner, prompts: list[Prompt], pad: int, batch_size: int) -> None:
    """Greedy next token of every prompt; keeps the layer-L residual of the correct ones."""
    for batch in tqdm(
        length_batches([len(p.ids) for p in prompts], batch_size), desc="ravel: model knowledge", unit="batch"
    ):
        ids, mask = pad_sequences([prompts[i].ids for i in batch], pad, side="left")
        logits, resid = runner.logits_and_residual(ids, mask)
        for row, i in enumerate(batch):
            p = prompts[i]
            p.correct = int(logits[row].argmax()) in p.targets
            if p.correct:
                p.resid = resid[row, ids.shape[1] - len(p.ids) :].clone()


def _chance(prompts: list[Prompt]) -> float:
    """Accuracy of the best constant next token (the majority-value baseline under the first-token criterion)."""
    counts = Counter(t for p in prompts for t in p.targets)
    return max(counts.values()) / len(prompts) if counts else 0.0


def _keep_top_entities(prompts: list[Prompt], top_n: int) -> set[str]:
    """sae_bench's filter: the entities with the most correct prompts."""
    score = Counter(p.entity for p in prompts if p.correct)
    return {e for e, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]}


def _sample_pairs(
    bases: list[Prompt],
    sources: list[Prompt],
    n: int,
    kind: str,
    tokenizer: Any,
    templates: dict[tuple[str, str], Any],
    rng: random.Random,
) -> list[Pair]:
    """Up to n pairs (distinct base prompts) whose source value starts with another token than the base's."""
    pairs = []
    for base in rng.sample(bases, len(bases)):
        template = templates[(base.entity_type, base.attribute)][base.template]
        options = []
        for src in sources:
            if src.entity == base.entity:
                continue
            as_base = value_token_ids(tokenizer, template, src.value)
            if as_base and not (as_base & base.targets):
                options.append((src, as_base))
        if options:
            src, as_base = rng.choice(options)
            pairs.append(Pair(base, src, as_base if kind == "cause" else base.targets, kind))
        if len(pairs) >= n:
            break
    return pairs


def _pairs_for(
    attribute: str,
    pool: list[Prompt],
    attributes: list[str],
    n: int,
    tokenizer: Any,
    templates: dict[tuple[str, str], Any],
    rng: random.Random,
) -> list[Pair]:
    """n cause pairs for `attribute` and as many isolation pairs drawn from the other attributes."""
    by_attr = defaultdict(list)
    for p in pool:
        by_attr[p.attribute].append(p)
    cause = _sample_pairs(by_attr[attribute], by_attr[attribute], n, "cause", tokenizer, templates, rng)
    iso: list[Pair] = []
    for other in attributes:
        if other != attribute:
            iso.extend(
                _sample_pairs(by_attr[other], by_attr[other], len(cause), "isolation", tokenizer, templates, rng)
            )
    rng.shuffle(iso)
    return cause + iso[: len(cause)]


# ---------------------------------------------------------------------------------------------- model passes


def _padded_resid(pairs: list[Pair], width: int, d_model: int) -> Tensor:
    out = torch.zeros(len(pairs), width, d_model)
    for row, pair in enumerate(pairs):
        out[row, width - len(pair.base.ids) :] = pair.base.resid
    return out


def _base_positions(pairs: list[Pair], width: int) -> Tensor:
    return torch.tensor([width - len(p.base.ids) + p.base.pos for p in pairs])


def _target_loss(logits: Tensor, targets: list[frozenset[int]]) -> Tensor:
    """Sum over rows of -log P(any target token)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -sum(torch.logsumexp(logp[row, sorted(t)], dim=0) for row, t in enumerate(targets))


def _training_gradients(runner: PromptRunner, pairs: list[Pair], pad: int, batch_size: int, d_model: int) -> Tensor:
    """dL/dr at each pair's base entity position (L = -log P(target)), clean model. SAE-independent, so stored in
    the adapter's pass cache (`models.pass_cache`) where it has one, keyed by the batch's ids, positions and
    targets."""
    grads = torch.zeros(len(pairs), d_model)
    for batch in tqdm(
        length_batches([len(p.base.ids) for p in pairs], batch_size),
        desc="ravel: attribution gradients",
        unit="batch",
        leave=False,
    ):
        chunk = [pairs[i] for i in batch]
        ids, mask = pad_sequences([p.base.ids for p in chunk], pad, side="left")
        pos = _base_positions(chunk, ids.shape[1])
        targets = [sorted(p.targets) for p in chunk]

        def build(chunk=chunk, ids=ids, mask=mask, pos=pos) -> dict[str, Tensor]:
            resid = _padded_resid(chunk, ids.shape[1], d_model).requires_grad_(True)
            logits = runner.logits_from_residual(resid, ids, mask, grad=True)
            (g,) = torch.autograd.grad(_target_loss(logits, [p.targets for p in chunk]), resid)
            return {"grads": g[torch.arange(len(chunk)), pos].detach().float()}

        flat = torch.tensor([t for ts in targets for t in ts], dtype=torch.long)
        lengths = torch.tensor([len(ts) for ts in targets], dtype=torch.long)
        key = {"ids": tensor_digest(ids, mask, pos, flat, lengths)}  # the clean residual follows from the ids
        grads[batch] = cached_pass(runner.adapter, GRADS_KIND, runner.layer, key, build)["grads"]
    return grads


@torch.no_grad()
def _entity_latents(sae: SAE, vectors: Tensor) -> Tensor:
    return sae.encode(vectors.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()


def _vectors(pairs: list[Pair], which: str) -> Tensor:
    return torch.stack([getattr(p, which).resid[getattr(p, which).pos] for p in pairs]) if pairs else torch.zeros(0)


@torch.no_grad()
def _intervened_hits(
    runner: PromptRunner,
    sae: SAE,
    pairs: list[Pair],
    z_base: Tensor,
    z_src: Tensor,
    latents: Tensor,
    pad: int,
    batch_size: int,
    d_model: int,
    add_error: bool,
) -> list[bool]:
    """For each pair: does the greedy next token after the interchange name the pair's target?"""
    hits = [False] * len(pairs)
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    for batch in length_batches([len(p.base.ids) for p in pairs], batch_size):
        chunk = [pairs[i] for i in batch]
        ids, mask = pad_sequences([p.base.ids for p in chunk], pad, side="left")
        resid = _padded_resid(chunk, ids.shape[1], d_model)
        pos = _base_positions(chunk, ids.shape[1])
        zb = z_base[batch]
        zm = zb.clone()
        zm[:, latents] = z_src[batch][:, latents]
        new = sae.decode(zm.to(dev, dtype)).float().cpu()
        if add_error:
            new = resid[torch.arange(len(chunk)), pos] + new - sae.decode(zb.to(dev, dtype)).float().cpu()
        resid[torch.arange(len(chunk)), pos] = new
        pred = runner.logits_from_residual(resid, ids, mask).argmax(-1).tolist()
        for row, i in enumerate(batch):
            hits[i] = pred[row] in pairs[i].targets
    return hits


def _scores(pairs: list[Pair], hits: list[bool]) -> tuple[float, float, int, int]:
    cause = [h for p, h in zip(pairs, hits) if p.kind == "cause"]
    iso = [h for p, h in zip(pairs, hits) if p.kind == "isolation"]
    return (float(np.mean(cause)) if cause else 0.0, float(np.mean(iso)) if iso else 0.0, len(cause), len(iso))


def pair_unit(pair: Pair) -> str:
    """The bootstrap unit of a pair: its base entity (pairs of one entity share its residuals, so they are
    resampled together)."""
    return f"{pair.base.entity_type}/{pair.base.entity}"


def resampled_scores(
    sets: list[AttributeSet], hits: list[list[bool]], units: list[str], counts: Tensor
) -> dict[str, Tensor]:
    """Each headline score under each resample: `counts` [R, len(units)] weighs every pair by the count of its
    base entity; an attribute's cause / isolation score is the weighted hit rate of its cause / isolation pairs
    (NaN where the resample drew none of them), averaged over the type's attributes and then over entity types
    (NaN-skipping) as the point estimate, which is the same computation with every count 1."""
    index = {u: i for i, u in enumerate(units)}
    by_type: dict[str, dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))
    for s, h in zip(sets, hits):
        rates = []
        for kind in ("cause", "isolation"):
            cols = [index[pair_unit(p)] for p in s.test if p.kind == kind]
            hit = torch.tensor([float(x) for p, x in zip(s.test, h) if p.kind == kind], dtype=torch.float64)
            w = counts[:, cols]
            rates.append((w @ hit) / w.sum(1) if cols else torch.zeros(len(counts), dtype=torch.float64))  # as _scores
        by_type[s.entity_type]["cause_score"].append(rates[0])
        by_type[s.entity_type]["isolation_score"].append(rates[1])
        by_type[s.entity_type]["disentanglement_score"].append((rates[0] + rates[1]) / 2)
    return {
        key: torch.stack([torch.stack(per[key]).nanmean(0) for per in by_type.values()]).nanmean(0)
        for key in ("disentanglement_score", "cause_score", "isolation_score")
    }


def attribution_scores(sae: SAE, z_base: Tensor, z_src: Tensor, grads: Tensor) -> Tensor:
    """First-order decrease of the summed target loss when each latent is interchanged: [d_sae].

    -sum_pairs (z_src - z_base)_j <W_dec[j], dL/dr>; invariant to negating latent j (z_j and W_dec[j] flip together).
    """
    w_grad = grads.to(sae.W_dec.device, sae.W_dec.dtype) @ sae.W_dec.T  # [pairs, d_sae]
    return -((z_src - z_base) * w_grad.float().cpu()).sum(0)


def select_latents(scores: Tensor, n: int) -> Tensor:
    """The n latents with the largest positive scores (fewer if fewer are positive)."""
    positive = int((scores > 0).sum())
    order = torch.argsort(scores, descending=True, stable=True)
    return order[: min(n, positive)]


# ---------------------------------------------------------------------------------------------- run


def _prepare(ctx: EvalContext, cfg: RavelEvalConfig, runner: PromptRunner) -> tuple[list[AttributeSet], dict[str, Any]]:
    tokenizer, bos, pad = ctx.adapter.tokenizer, ctx.adapter.bos_token_id, ctx.adapter.pad_token_id
    rng = random.Random(cfg.random_seed)
    sets: list[AttributeSet] = []
    summary: dict[str, Any] = {}
    for entity_type, attributes in cfg.entity_attribute_selection.items():
        if len(set(attributes)) < 2:
            raise UserError(f"ravel: entity type {entity_type!r} needs at least two attributes (got {attributes})")
        load = ravel_entities if cfg.dataset_source == "sae_bench" else load_entities  # RAVEL's own data, or offline
        data = load(entity_type, list(dict.fromkeys(attributes)), cfg.max_candidate_entities)
        templates = {(entity_type, a): data.templates[a] for a in data.attributes}
        prompts = _build_prompts(data, tokenizer, bos)
        _answer_all(runner, prompts, pad, cfg.llm_batch_size)
        kept_entities = sorted(_keep_top_entities(prompts, cfg.top_n_entities))
        rng.shuffle(kept_entities)
        half = set(kept_entities[: len(kept_entities) // 2])
        kept = [p for p in prompts if p.correct and p.entity in kept_entities]
        train_pool = [p for p in kept if p.entity in half]
        test_pool = [p for p in kept if p.entity not in half]
        summary[entity_type] = {
            "data_source": data.source,
            "candidate_entities": len(data.values),
            "candidate_prompts": len(prompts),
            "correct_prompts": sum(p.correct for p in prompts),
            "kept_entities": len(kept_entities),
            "kept_prompts": len(kept),
            "templates": {a: [t.text for t in data.templates[a]] for a in data.attributes},
            "accuracy_by_template": {
                a: [
                    float(np.mean([p.correct for p in prompts if p.attribute == a and p.template == ti] or [0.0]))
                    for ti in range(len(data.templates[a]))
                ]
                for a in data.attributes
            },
        }
        for attr in data.attributes:
            candidates = [p for p in prompts if p.attribute == attr]
            s = AttributeSet(
                entity_type,
                attr,
                float(np.mean([p.correct for p in candidates])) if candidates else 0.0,
                _chance(candidates),
                len(candidates),
            )
            s.train = _pairs_for(
                attr, train_pool, list(data.attributes), cfg.num_train_pairs_per_attribute, tokenizer, templates, rng
            )
            s.test = _pairs_for(
                attr, test_pool, list(data.attributes), cfg.num_pairs_per_attribute, tokenizer, templates, rng
            )
            sets.append(s)
    for s in sets:
        if s.train:
            s.grads = _training_gradients(runner, s.train, pad, cfg.llm_batch_size, ctx.adapter.d_model)
    return sets, summary


def _check_config(cfg: RavelEvalConfig) -> None:
    if cfg.latent_selection != "attribution":
        raise UserError(f"ravel: unknown latent_selection {cfg.latent_selection!r}; known: attribution")
    if not cfg.entity_attribute_selection:
        raise UserError("ravel: entity_attribute_selection is empty")
    if not cfg.n_latents_grid or min(cfg.n_latents_grid) < 1:
        raise UserError("ravel: n_latents_grid needs positive counts")


def run_ravel(
    ctx: EvalContext, saes: dict[str, SAE], config: RavelEvalConfig | None = None
) -> dict[str, RavelEvalOutput]:
    start = time.perf_counter()
    cfg = resolve_config(RavelEvalConfig, ctx, EVAL_NAME, config)
    _check_config(cfg)
    runner = PromptRunner(ctx.adapter, ctx.layer)
    pad, d_model = ctx.adapter.pad_token_id, ctx.adapter.d_model
    sets, summary = _prepare(ctx, cfg, runner)
    scored = [
        s for s in sets if len([p for p in s.test if p.kind == "cause"]) >= cfg.min_pairs_per_attribute and s.train
    ]
    if not scored:
        raise UserError(
            "ravel: no attribute has enough pairs the model answers correctly ("
            + ", ".join(f"{s.entity_type}/{s.attribute}: accuracy {s.base_accuracy:.2f}" for s in sets)
            + f"; need {cfg.min_pairs_per_attribute} evaluation cause pairs)"
        )
    units = sorted({pair_unit(p) for s in scored for p in s.test})  # the SAE does not enter: paired resamples
    counts = resample_counts(len(units), cfg.n_bootstrap, cfg.bootstrap_seed)
    prep_seconds = time.perf_counter() - start
    outputs = {}
    for sid, sae in tqdm(saes.items(), desc="ravel: interventions", unit="sae"):
        t0 = time.perf_counter()
        details, records, test_hits = [], [], []
        for s in scored:
            zb_tr, zs_tr = (
                _entity_latents(sae, _vectors(s.train, "base")),
                _entity_latents(sae, _vectors(s.train, "source")),
            )
            zb_te, zs_te = (
                _entity_latents(sae, _vectors(s.test, "base")),
                _entity_latents(sae, _vectors(s.test, "source")),
            )
            ranking = attribution_scores(sae, zb_tr, zs_tr, s.grads)
            grid = {}
            for n in sorted(set(cfg.n_latents_grid)):
                latents = select_latents(ranking, n)
                hits = _intervened_hits(
                    runner, sae, s.train, zb_tr, zs_tr, latents, pad, cfg.llm_batch_size, d_model, cfg.add_error
                )
                cause, iso, _, _ = _scores(s.train, hits)
                grid[n] = {
                    "n_latents_used": len(latents),
                    "cause": cause,
                    "isolation": iso,
                    "disentanglement": (cause + iso) / 2,
                }
            best_n = max(grid, key=lambda n: (grid[n]["disentanglement"], -n))
            latents = select_latents(ranking, best_n)
            hits = _intervened_hits(
                runner, sae, s.test, zb_te, zs_te, latents, pad, cfg.llm_batch_size, d_model, cfg.add_error
            )
            cause, iso, n_cause, n_iso = _scores(s.test, hits)
            test_hits.append(hits)
            other: tuple[float | None, float | None] = (None, None)
            if cfg.report_other_error_mode:
                hits = _intervened_hits(
                    runner, sae, s.test, zb_te, zs_te, latents, pad, cfg.llm_batch_size, d_model, not cfg.add_error
                )
                other = _scores(s.test, hits)[:2]
            meaningful = s.base_accuracy >= s.chance_accuracy + cfg.chance_margin
            details.append(
                RavelResultDetail(
                    entity_type=s.entity_type,
                    attribute=s.attribute,
                    cause_score=cause,
                    isolation_score=iso,
                    disentanglement_score=(cause + iso) / 2,
                    n_latents=len(latents),
                    base_accuracy=s.base_accuracy,
                    chance_accuracy=s.chance_accuracy,
                    meaningful=meaningful,
                    n_cause_pairs=n_cause,
                    n_isolation_pairs=n_iso,
                    cause_score_other_error_mode=other[0],
                    isolation_score_other_error_mode=other[1],
                )
            )
            records.append(
                {
                    "entity_type": s.entity_type,
                    "attribute": s.attribute,
                    "train_grid": grid,
                    "chosen_n": best_n,
                    "selected_latents": [int(j) for j in latents],
                    "train_pairs": len(s.train),
                    "test_pairs": len(s.test),
                }
            )
        in_headline = [i for i, d in enumerate(details) if d.meaningful] or list(range(len(details)))
        headline = [details[i] for i in in_headline]
        samples = resampled_scores([scored[i] for i in in_headline], [test_hits[i] for i in in_headline], units, counts)
        record = paired_samples("base entity of the evaluation pairs", units, cfg.bootstrap_seed, samples)
        by_type: dict[str, list[RavelResultDetail]] = defaultdict(list)
        for d in headline:
            by_type[d.entity_type].append(d)

        def mean_over_types(key: str, by_type=by_type) -> float:
            return float(np.mean([np.mean([getattr(d, key) for d in ds]) for ds in by_type.values()]))

        other_metrics = None
        if cfg.report_other_error_mode:
            c_o, i_o = (
                mean_over_types("cause_score_other_error_mode"),
                mean_over_types("isolation_score_other_error_mode"),
            )
            other_metrics = RAVELMetricResults(
                disentanglement_score=(c_o + i_o) / 2, cause_score=c_o, isolation_score=i_o
            )

        knowledge = RavelKnowledgeMetrics(
            base_accuracy=float(np.mean([d.base_accuracy for d in headline])),
            chance_accuracy=float(np.mean([d.chance_accuracy for d in headline])),
            meaningful=all(d.meaningful for d in headline),
            n_entities=sum(v["kept_entities"] for v in summary.values()),
            n_attributes=len(headline),
            n_cause_pairs=sum(d.n_cause_pairs for d in headline),
            n_isolation_pairs=sum(d.n_isolation_pairs for d in headline),
        )
        outputs[sid] = RavelEvalOutput(
            eval_config=cfg,
            eval_result_metrics=RavelMetricCategories(
                ravel=RAVELMetricResults(
                    disentanglement_score=mean_over_types("disentanglement_score"),
                    cause_score=mean_over_types("cause_score"),
                    isolation_score=mean_over_types("isolation_score"),
                ),
                knowledge=knowledge,
                ravel_other_error_mode=other_metrics,
            ),
            eval_result_details=details,
            eval_result_unstructured={
                "attributes": records,
                "datasets": summary,
                "unscored_attributes": [
                    {
                        "entity_type": s.entity_type,
                        "attribute": s.attribute,
                        "base_accuracy": s.base_accuracy,
                        "chance_accuracy": s.chance_accuracy,
                        "test_cause_pairs": len([p for p in s.test if p.kind == "cause"]),
                    }
                    for s in sets
                    if s not in scored
                ],
                "headline_attributes": [f"{d.entity_type}/{d.attribute}" for d in headline],
                INTERVALS_KEY: sample_intervals(record),
                PAIRED_SAMPLES_KEY: record,
                "bootstrap_unit": "base entity of the evaluation pairs (all its pairs together; latents fixed)",
                "headline_error_mode": "SAE error kept"
                if cfg.add_error
                else "SAE error dropped (sae_bench MDBM default)",
                "resumed_forward": runner.resume,
                "shared_seconds": prep_seconds,
                "sae_seconds": time.perf_counter() - t0,
            },
            **output_common(ctx, sid, sae),
        )
    total = time.perf_counter() - start
    for out in outputs.values():
        out.eval_result_unstructured["eval_seconds_all_saes"] = total  # type: ignore[index]
    return outputs


RAVEL = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=RavelEvalConfig,
        output_cls=RavelEvalOutput,
        description="RAVEL: interchange the SAE latents of one entity attribute (signed) at the entity token; cause, "
        "isolation and disentanglement on facts the model knows (offline cities and Nobel laureates)",
        run=run_ravel,
    )
)
