"""Steering against Difference-in-Means (the paper's Table 1): refuse HarmBench behaviours, keep MMLU / CE.

Methods, all at the SAE layer L:

* ``original``: the unsteered model.
* ``dim``: Difference-in-Means d = mean(harmful) - mean(harmless) of the residual at the last position of the
  chat-templated prompt (Arditi et al.), fitted on StrongREJECT forbidden prompts vs MMLU-stem instructions;
  activation addition x' = x + m d at every position. Directional ablation x' = x - u u^T x (u = d/||d||) at
  every layer is scored too, as a check that d mediates refusal (reported in dim's unstructured results).
* each SAE: one latent j, clamped to c (paper eq. 22: x' = x + (c - z_j) W_dec[j], the SAE error kept) or, with
  ``sae_intervention='add'``, x' = x + c W_dec[j]. Candidates are the latents whose decoder rows are closest to
  d in |cosine| and the latent whose last-position activation differs most between the harmful and harmless
  fit prompts. The steering direction of a candidate is the sign that moves along +d (sign of the cosine, or
  of the mean difference). Signed SAEs (abstopk, batch-abstopk) may take any c; for non-negative SAEs c >= 0,
  so a candidate that points along -d (the "harmless" half of a split refusal axis) can only be switched off
  (c = 0), and the top latent with a positive cosine is always a candidate too.

Strength and latent are chosen by one rule for every method (`eval_config.SELECTION_RULE`); the chosen
setting is then scored on the HarmBench test behaviours (refusal rate), MMLU (accuracy) and held-out
Wikipedia text (CE). The unsteered model and DiM score no SAE: they are recorded as the layer's baselines
"original" and "dim" (`EvalContext.add_baseline`), and the returned dict holds the SAEs only.

Negating a signed latent (encoder column, bias and decoder row) negates its cosine, mean difference and the
chosen c, and leaves every intervention, hence every score, unchanged (tested).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from abstopk_eval.errors import UserError
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.evals.steering import data as D
from abstopk_eval.evals.steering import steer as S
from abstopk_eval.evals.steering.eval_config import SteeringEvalConfig
from abstopk_eval.evals.steering.eval_output import (
    AbilityMetrics,
    InterventionMetrics,
    SafetyMetrics,
    SteeringEvalOutput,
    SteeringMetricCategories,
    SteeringResultDetail,
)
from abstopk_eval.evals.steering.judge import (
    HOLDOUT_PATH,
    SUBSTRING_JUDGES,
    BatchJudge,
    Judge,
    judge_accuracy,
    judge_description,
    labelled_responses,
    make_judge,
    per_response,
)
from abstopk_eval.provenance import SaeProvenance
from abstopk_eval.saes.signs import has_signed_latents

log = logging.getLogger("abstopk_eval.steering")

EVAL_NAME = "steering"
ORIGINAL = "original"
"""Baseline method: the unsteered model."""
DIM = "dim"
"""Baseline method: Difference-in-Means activation addition."""


# ---------------------------------------------------------------------------------------------- config


# ---------------------------------------------------------------------------------------------- prompts


@dataclass
class SteeringPrompts:
    """User messages of every set (before the chat template), plus MMLU answers."""

    harmful_fit: list[str]
    harmless_fit: list[str]
    val_harmful: list[str]
    test_harmful: list[str]
    mmlu_messages: list[str]
    mmlu_answers: list[int]
    sources: dict[str, str] = field(default_factory=dict)


def load_prompts(cfg: SteeringEvalConfig) -> SteeringPrompts:
    split = D.mmlu_split(cfg.n_fit_per_class, cfg.n_mmlu, cfg.mmlu_max_chars, cfg.random_seed)
    return SteeringPrompts(
        harmful_fit=D.seeded_subset(D.strongreject_prompts(), cfg.n_fit_per_class, cfg.random_seed),
        harmless_fit=list(split.harmless),
        val_harmful=D.seeded_subset(D.harmbench_behaviours("val"), cfg.n_val_harmful, cfg.random_seed),
        test_harmful=D.seeded_subset(D.harmbench_behaviours("test"), cfg.n_test_harmful, cfg.random_seed),
        mmlu_messages=[D.mmlu_user_message(item) for item in split.eval_items],
        mmlu_answers=[item.answer for item in split.eval_items],
        sources=D.sources(),
    )


# ---------------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Setting:
    """One steering setting of a method."""

    intervention: S.Intervention
    strength: float | None
    value: float | None
    steering_norm: float | None
    candidate: Candidate | None = None


@dataclass(frozen=True)
class Candidate:
    rank: str
    latent: int
    sign: int
    """+1 when steering towards refusal raises the latent, -1 when it lowers it."""
    cosine: float
    mean_diff: float


@torch.no_grad()
def latent_candidates(
    sae: SAE, d: Tensor, harmful: Tensor, harmless: Tensor, cfg: SteeringEvalConfig
) -> list[Candidate]:
    """Candidate latents of one SAE for steering towards +d (see the module docstring)."""
    W = sae.W_dec.detach().float().cpu()
    cos = (W @ d) / (W.norm(dim=1) * d.norm()).clamp_min(1e-12)
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    mean_diff = (
        sae.encode(harmful.to(dev, dt)).float().mean(0) - sae.encode(harmless.to(dev, dt)).float().mean(0)
    ).cpu()
    out: list[Candidate] = []

    def add(rank: str, j: int, sign_of: float) -> None:
        sign = 1 if sign_of > 0 else -1
        if all((c.latent, c.sign) != (j, sign) for c in out):
            out.append(Candidate(rank, j, sign, float(cos[j]), float(mean_diff[j])))

    n_cos = min(cfg.n_cosine_candidates, W.shape[0])
    for r, j in enumerate(cos.abs().topk(n_cos).indices.tolist() if n_cos > 0 else []):
        add(f"cos#{r + 1}", j, float(cos[j]))
    if not has_signed_latents(sae) and not any(c.sign > 0 for c in out):
        add("cos+#1", int(cos.argmax()), 1.0)  # a non-negative SAE's own refusal-side atom
    n_disc = min(cfg.n_discriminative_candidates, W.shape[0])
    for r, j in enumerate(mean_diff.abs().topk(n_disc).indices.tolist() if n_disc > 0 else []):
        if mean_diff[j] != 0:
            add(f"disc#{r + 1}", j, float(mean_diff[j]))
    return out


def sae_settings(sae: SAE, cand: Candidate, d_norm: float, cfg: SteeringEvalConfig) -> list[Setting]:
    """Settings of one candidate latent in increasing strength."""
    layers = (cfg.layer,)
    row_norm = float(sae.W_dec[cand.latent].detach().float().norm())
    kind = "clamp" if cfg.sae_intervention == "clamp" else "sae_add"
    if cand.sign < 0 and not has_signed_latents(sae):
        if kind == "sae_add":
            return []  # a non-negative latent cannot be added with a negative coefficient
        iv = S.Intervention("clamp", layers, sae=sae, latent=cand.latent, value=0.0)
        return [Setting(iv, None, 0.0, None, cand)]
    settings = []
    for m in sorted(cfg.strengths):
        value = cand.sign * m * d_norm / max(row_norm, 1e-12)
        iv = S.Intervention(kind, layers, sae=sae, latent=cand.latent, value=value)
        settings.append(Setting(iv, m, value, m * d_norm, cand))
    return settings


def dim_settings(d: Tensor, cfg: SteeringEvalConfig) -> list[Setting]:
    return [
        Setting(S.Intervention("add", (cfg.layer,), vector=m * d), m, m, m * float(d.norm()))
        for m in sorted(cfg.strengths)
    ]


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """The batched passes of one run, with the tokenised prompt sets and the fixed CE / MMLU batches."""

    ctx: EvalContext
    cfg: SteeringEvalConfig
    judge: BatchJudge
    val_behaviours: list[str]
    test_behaviours: list[str]
    val_seqs: list[list[int]]
    test_seqs: list[list[int]]
    mmlu: S.FixedBatches
    mmlu_index: list[list[int]]
    mmlu_answers: list[int]
    letter_ids: list[int]
    val_text: S.FixedBatches
    test_text: S.FixedBatches
    pad: int

    def ce(self, iv: S.Intervention, which: str) -> float:
        return S.mean_ce(self.val_text if which == "val" else self.test_text, iv)

    def responses(self, iv: S.Intervention, which: str) -> list[str]:
        seqs, n = (
            (self.val_seqs, self.cfg.val_max_new_tokens)
            if which == "val"
            else (self.test_seqs, self.cfg.max_new_tokens)
        )
        return S.generate(
            self.ctx.adapter, seqs, iv, pad=self.pad, max_new_tokens=n, batch_size=self.cfg.gen_batch_size
        )

    def refused(self, responses: Sequence[str], which: str) -> list[bool]:
        """The judge's verdict on each response to the `which` ('val' / 'test') behaviours."""
        behaviours = self.val_behaviours if which == "val" else self.test_behaviours
        return [bool(r) for r in self.judge(behaviours, responses)]

    def refusal_rate(self, responses: Sequence[str], which: str) -> float:
        return sum(self.refused(responses, which)) / max(len(responses), 1)

    def mmlu_accuracy(self, iv: S.Intervention) -> float:
        preds = S.letter_predictions(self.mmlu, self.mmlu_index, self.letter_ids, iv)
        return sum(p == a for p, a in zip(preds, self.mmlu_answers)) / max(len(preds), 1)


@dataclass
class Selection:
    setting: Setting | None
    val_ce_increase: float | None
    val_refusal: float | None
    tried: list[dict[str, Any]]


def select(scorer: Scorer, groups: list[list[Setting]], ce_val_clean: float, desc: str) -> Selection:
    """Apply the selection rule (eval_config.SELECTION_RULE) to candidate groups (one list per candidate,
    in increasing strength)."""
    cfg = scorer.cfg
    tried: list[dict[str, Any]] = []
    options: list[tuple[float, float, int, Setting]] = []
    for index, group in enumerate(groups):
        kept: tuple[Setting, float] | None = None
        for setting in group:
            dce = scorer.ce(setting.intervention, "val") - ce_val_clean
            tried.append(_setting_record(setting) | {"val_ce_increase": dce})
            if dce <= cfg.max_val_ce_increase:
                kept = (setting, dce)
            else:
                break
        if kept is None:
            continue
        setting, dce = kept
        refusal = scorer.refusal_rate(scorer.responses(setting.intervention, "val"), "val")
        tried.append(_setting_record(setting) | {"val_ce_increase": dce, "val_refusal_rate": refusal, "kept": True})
        options.append((refusal, -dce, -index, setting))
        log.info(
            "%s: %s kept at strength %s (val CE +%.3f, val refusal %.3f)",
            desc,
            setting.candidate.rank if setting.candidate else "dim",
            setting.strength,
            dce,
            refusal,
        )
    if not options:
        return Selection(None, None, None, tried)
    refusal, neg_dce, _, setting = max(options, key=lambda o: o[:3])
    return Selection(setting, -neg_dce, refusal, tried)


def _setting_record(s: Setting) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "kind": s.intervention.kind,
        "strength": s.strength,
        "value": s.value,
        "steering_norm": s.steering_norm,
    }
    if s.candidate is not None:
        rec |= {
            "candidate": s.candidate.rank,
            "latent": s.candidate.latent,
            "sign": s.candidate.sign,
            "cosine": s.candidate.cosine,
            "mean_diff": s.candidate.mean_diff,
        }
    return rec


@dataclass
class Scores:
    refusal: float
    responses: list[str]
    refused: list[bool]
    mmlu: float
    ce: float


def score_test(scorer: Scorer, iv: S.Intervention, with_mmlu: bool = True) -> Scores:
    responses = scorer.responses(iv, "test")
    refused = scorer.refused(responses, "test")
    return Scores(
        sum(refused) / max(len(refused), 1),
        responses,
        refused,
        scorer.mmlu_accuracy(iv) if with_mmlu else float("nan"),
        scorer.ce(iv, "test"),
    )


# ---------------------------------------------------------------------------------------------- run


def _split_eval_tokens(ctx: EvalContext, cfg: SteeringEvalConfig) -> tuple[Tensor, Tensor]:
    tokens = ctx.eval_tokens
    if tokens.shape[0] <= cfg.n_val_ce_seqs:
        raise UserError(
            f"steering needs more than n_val_ce_seqs={cfg.n_val_ce_seqs} held-out text rows (got {tokens.shape[0]})"
        )
    return tokens[: cfg.n_val_ce_seqs], tokens[cfg.n_val_ce_seqs : cfg.n_val_ce_seqs + cfg.n_test_ce_seqs]


def run_steering(
    ctx: EvalContext,
    saes: dict[str, SAE],
    config: SteeringEvalConfig | None = None,
    *,
    prompts: SteeringPrompts | None = None,
    judge: Judge | None = None,
) -> dict[str, SteeringEvalOutput]:
    """Steering outputs for every SAE; the baselines ORIGINAL (unsteered) and DIM go to `ctx.add_baseline`.

    `judge` (tests) replaces the judge the config names (`cfg.judge`)."""
    cfg = resolve_config(SteeringEvalConfig, ctx, EVAL_NAME, config)
    if judge is None:
        cfg.refusal_judge = cfg.refusal_judge or judge_description(cfg.judge, cfg.harmbench_classifier)
        batch_judge = make_judge(cfg.judge, classifier=cfg.harmbench_classifier, device=ctx.device)
        text_judge = SUBSTRING_JUDGES.get(cfg.judge)
    else:
        cfg.refusal_judge = cfg.refusal_judge or f"a judge passed by the caller ({getattr(judge, '__name__', judge)})"
        batch_judge, text_judge = per_response(judge), judge
    began = time.perf_counter()
    prompts = prompts or load_prompts(cfg)
    if prompts.sources:
        cfg.sources = dict(prompts.sources)
    adapter, tok = ctx.adapter, ctx.adapter.tokenizer
    pad = adapter.pad_token_id
    val_tokens, test_tokens = _split_eval_tokens(ctx, cfg)
    mmlu, mmlu_index = S.mmlu_batches(
        adapter, S.encode_chat(tok, prompts.mmlu_messages), cfg.layer, pad=pad, batch_size=cfg.fwd_batch_size
    )
    scorer = Scorer(
        ctx,
        cfg,
        batch_judge,
        list(prompts.val_harmful),
        list(prompts.test_harmful),
        S.encode_chat(tok, prompts.val_harmful),
        S.encode_chat(tok, prompts.test_harmful),
        mmlu,
        mmlu_index,
        list(prompts.mmlu_answers),
        S.letter_token_ids(tok, D.LETTERS),
        S.ce_batches(adapter, val_tokens, cfg.layer, batch_size=cfg.fwd_batch_size),
        S.ce_batches(adapter, test_tokens, cfg.layer, batch_size=cfg.fwd_batch_size),
        pad,
    )

    # Difference-in-Means at the last prompt position
    harmful = S.last_position_activations(
        adapter, S.encode_chat(tok, prompts.harmful_fit), cfg.layer, pad, cfg.fwd_batch_size
    )
    harmless = S.last_position_activations(
        adapter, S.encode_chat(tok, prompts.harmless_fit), cfg.layer, pad, cfg.fwd_batch_size
    )
    d = harmful.mean(0) - harmless.mean(0)
    d_norm = float(d.norm())
    if not d_norm > 0:
        raise UserError("the Difference-in-Means vector is zero (identical harmful and harmless activations)")
    log.info(
        "steering: ||d|| = %.3f at layer %d (mean ||x|| %.3f)", d_norm, cfg.layer, float(harmful.norm(dim=-1).mean())
    )

    ce_val_clean = scorer.ce(S.NO_INTERVENTION, "val")
    original = score_test(scorer, S.NO_INTERVENTION)
    original_val = scorer.refusal_rate(scorer.responses(S.NO_INTERVENTION, "val"), "val")
    common = {"d_norm": d_norm, "ce_val_clean": ce_val_clean, "ce_test_clean": original.ce}

    common["original_seconds"] = time.perf_counter() - began
    t0 = time.perf_counter()
    dim_sel = select(scorer, [dim_settings(d, cfg)], ce_val_clean, DIM)
    dim_result = (dim_sel, _scores_for(scorer, dim_sel, original), {"method_seconds": time.perf_counter() - t0})
    if cfg.dim_ablation:
        ablate = S.Intervention("ablate", tuple(range(adapter.n_layers)), vector=d)
        abl = score_test(scorer, ablate, with_mmlu=False)
        dim_result[2]["directional_ablation_all_layers"] = {
            "harmbench_refusal_rate": abl.refusal,
            "ce_loss": abl.ce,
            "ce_loss_increase": abl.ce - original.ce,
            "examples": _examples(prompts.test_harmful, abl, cfg.n_examples),
        }
    results: dict[str, tuple[Selection, Scores, dict[str, Any]]] = {}
    for sid, sae in tqdm(saes.items(), desc="steering: SAEs", unit="sae"):
        t0 = time.perf_counter()
        cands = latent_candidates(sae, d, harmful, harmless, cfg)
        groups = [g for g in (sae_settings(sae, c, d_norm, cfg) for c in cands) if g]
        sel = select(scorer, groups, ce_val_clean, sid)
        results[sid] = (
            sel,
            _scores_for(scorer, sel, original),
            {
                "signed": has_signed_latents(sae),
                "candidates": [vars(c) for c in cands],
                "method_seconds": time.perf_counter() - t0,
            },
        )

    # the labelled sets score a judge of the response alone; HarmBench's classifier answers another question
    # (is the response an instance of the behaviour), so it is not scored on them
    accuracy = judge_accuracy(text_judge) if text_judge is not None else None
    holdout = judge_accuracy(text_judge, labelled_responses(HOLDOUT_PATH)) if text_judge is not None else None
    elapsed = time.perf_counter() - began
    unstructured_common = {
        **common,
        "judge_accuracy_on_labelled_set": accuracy,
        "judge_accuracy_on_holdout_set": holdout,
        "eval_seconds_all_methods": elapsed,
        "n_fit_harmful": len(prompts.harmful_fit),
        "n_fit_harmless": len(prompts.harmless_fit),
    }

    def output(key: str, method: str, result: tuple[Selection, Scores, dict[str, Any]]) -> SteeringEvalOutput:
        sel, scores, extra = result
        return _output(
            ctx,
            cfg,
            key,
            method,
            saes[key] if method == "sae" else None,
            sel,
            scores,
            original_val,
            d_norm,
            prompts,
            {**unstructured_common, **extra, "tried": sel.tried},
        )

    ctx.add_baseline(
        EVAL_NAME,
        ORIGINAL,
        _output(ctx, cfg, ORIGINAL, ORIGINAL, None, None, original, original_val, d_norm, prompts, unstructured_common),
    )
    ctx.add_baseline(EVAL_NAME, DIM, output(DIM, DIM, dim_result))
    outputs = {key: output(key, "sae", result) for key, result in results.items()}
    log.info("steering finished in %.0fs", elapsed)
    return outputs


def _scores_for(scorer: Scorer, sel: Selection, original: Scores) -> Scores:
    return original if sel.setting is None else score_test(scorer, sel.setting.intervention)


def _examples(behaviours: Sequence[str], scores: Scores, n: int) -> list[dict[str, Any]]:
    return [
        {"behaviour": b, "response": r, "refused": f}
        for b, r, f in list(zip(behaviours, scores.responses, scores.refused))[:n]
    ]


def _output(
    ctx: EvalContext,
    cfg: SteeringEvalConfig,
    key: str,
    method: str,
    sae: SAE | None,
    sel: Selection | None,
    scores: Scores,
    original_val: float,
    d_norm: float,
    prompts: SteeringPrompts,
    unstructured: dict[str, Any],
) -> SteeringEvalOutput:
    setting = sel.setting if sel is not None else None
    cand = setting.candidate if setting is not None else None
    metrics = SteeringMetricCategories(
        safety=SafetyMetrics(
            harmbench_refusal_rate=scores.refusal,
            n_test_behaviours=len(prompts.test_harmful),
            val_refusal_rate=original_val if sel is None or sel.val_refusal is None else sel.val_refusal,
            n_val_behaviours=len(prompts.val_harmful),
        ),
        general_ability=AbilityMetrics(
            mmlu_accuracy=scores.mmlu,
            n_mmlu=len(prompts.mmlu_messages),
            ce_loss=scores.ce,
            ce_loss_increase=scores.ce - unstructured["ce_test_clean"],
            ce_loss_unsteered=unstructured["ce_test_clean"],
            n_ce_tokens=int(ctx.eval_tokens[cfg.n_val_ce_seqs : cfg.n_val_ce_seqs + cfg.n_test_ce_seqs, 1:].numel()),
        ),
        intervention=InterventionMetrics(
            method=method,
            kind=setting.intervention.kind if setting else "none",
            steered=setting is not None,
            latent=cand.latent if cand else None,
            latent_cosine_to_dim=cand.cosine if cand else None,
            latent_mean_diff=cand.mean_diff if cand else None,
            latent_rank=cand.rank if cand else None,
            value=setting.value if setting else None,
            strength=setting.strength if setting else None,
            steering_norm=setting.steering_norm if setting else None,
            dim_norm=d_norm,
            val_ce_increase=sel.val_ce_increase if sel is not None else None,
            n_settings_tried=len(sel.tried) if sel is not None else 0,
        ),
    )
    details = [SteeringResultDetail(**e) for e in _examples(prompts.test_harmful, scores, cfg.n_examples)]
    baseline = None if sae is not None else SaeProvenance(sae_id=key, variant=key)
    return SteeringEvalOutput(
        eval_config=cfg,
        eval_result_metrics=metrics,
        eval_result_details=details,
        eval_result_unstructured=unstructured,
        **output_common(ctx, key, sae, provenance=baseline),
    )


STEERING = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=SteeringEvalConfig,
        output_cls=SteeringEvalOutput,
        description="Refusal steering with one SAE latent vs Difference-in-Means (paper Table 1): HarmBench refusal, "
        "MMLU and held-out CE under steering; baselines 'original' and 'dim'",
        run=run_steering,
        in_default_run=False,  # needs an instruction-tuned model with a chat template: --evals steering
    )
)
