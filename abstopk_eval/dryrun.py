"""`--dry-run`: a run's plan and its estimated cost, from shapes alone (no weights, no text, no activations).

What is estimated and how (printed with every plan, so the numbers can be checked):

- A language-model pass costs 2 x (parameters a token meets) FLOPs per token: blocks 0..L for activations at layer
  L (later blocks do not run), every block plus the LM head for a pass that computes logits.
- An SAE training step costs `SAE_STEP_COST` x the encoder matmul (2 d_in d_sae FLOPs per token): the trainer ran at
  28-35% of the dense encoder-matmul rate on CPU (benchmarks/results/train_throughput.json; the decoder and encoder
  backward touch active latents only).
- FLOPs run at an assumed sustained rate per device type and dtype (`ASSUMED_FLOPS`): not measured on a GPU.
- Memory: the LM's weights in its dtype; per SAE, weights + gradients + two Adam moments in fp32 (16 bytes per
  parameter) for every SAE of the run (all stay resident), plus one step's workspace (a few [batch, d_sae] fp32
  tensors); an LM batch holds about (4 d_model + 2 d_mlp) values per token, and logits are fp32 (with two copies);
  a stream keeps the LM and its shuffle buffer (the rows and their shuffled copy, fp32) on the device while training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from abstopk_eval import runtime
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.models.shapes import ModelShape, model_shape
from abstopk_eval.saes.variants import get_variant, sae_id

if TYPE_CHECKING:
    from abstopk_eval.workflow import RunPlan

SAE_STEP_COST = 3.5
"""Cost of one SAE training step per token, in units of the encoder matmul (2 d_in d_sae FLOPs)."""
STEP_WORKSPACE = 4
"""[batch, d_sae] fp32 tensors alive during one SAE step (pre-activations, selection, gradients)."""
ASSUMED_FLOPS: dict[tuple[str, str], float] = {
    ("cuda", "bfloat16"): 400e12,
    ("cuda", "float16"): 400e12,
    ("cuda", "tf32"): 200e12,
    ("cuda", "float32"): 30e12,
    ("cpu", "float32"): 0.27e12,
    ("cpu", "bfloat16"): 0.1e12,
    ("cpu", "float16"): 0.05e12,
    ("mps", "float32"): 5e12,
    ("mps", "bfloat16"): 10e12,
    ("mps", "float16"): 10e12,
}
"""Assumed sustained matmul FLOP/s. CUDA: an H100/H200-class GPU at about 40% of its dense peak (bf16 ~990, TF32 ~495,
fp32 ~67 TFLOP/s); CPU: the fp32 encoder-matmul rate measured on this project's 2-core CPU; MPS: a guess."""
CORPUS_TOKENS: dict[str, float | None] = {"wiki-en": 1.0e6, "pile": None}
"""Approximate training tokens of a corpus (Gemma tokens; other tokenizers differ by tens of percent); None: more
than any preset asks for. Corpora missing here are known only once tokenised."""
EVAL_COST_NOTE = "core's CE/KL passes and the held-out cache only; the task evaluations are not estimated"

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_EVAL_BATCH_SIZE = next(f.default for f in dataclasses.fields(EvalContext) if f.name == "batch_size")
"""Sequences per LM pass in evaluations when --llm-batch-size is not given."""


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    work: tuple[tuple[float, tuple[str, str]], ...]
    """(FLOPs, (device type, dtype) of the rate they run at) per kind of work in the stage."""
    gpu_bytes: float
    disk_bytes: float = 0.0

    def seconds(self) -> float:
        return sum(flops / ASSUMED_FLOPS.get(key, ASSUMED_FLOPS[("cpu", "float32")]) for flops, key in self.work)


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def _tokens(n: float) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e5 else f"{n:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def planned_saes(plan: RunPlan) -> list[str]:
    """The SAE ids the run trains (as `workflow.plan_jobs` names them, without their identity hash)."""
    ids = []
    for variant in plan.variants:
        for k in plan.ks if get_variant(variant).uses_k else plan.ks[:1]:
            ids += [sae_id(variant, k, seed, plan.preset.name) for seed in plan.seeds]
    return list(dict.fromkeys(ids))


def _matmul_key(device: str, dtype: str, tf32: bool) -> tuple[str, str]:
    kind = runtime.device_type(device)
    return (kind, "tf32" if dtype == "float32" and tf32 and kind == "cuda" else dtype)


def stages(plan: RunPlan, shape: ModelShape, n_saes: int) -> tuple[list[Stage], dict[str, float]]:
    """The run's stages with FLOPs, rate and memory, and the token counts they derive from."""
    preset, seq = plan.preset, plan.model.context_size
    rows_per_token = (seq - 1) / seq  # position 0 of every row (BOS) is not trained on
    d, d_sae = shape.d_model, preset.expansion * shape.d_model
    llm_bytes = _BYTES[plan.llm_dtype]
    llm_weights = shape.n_params * llm_bytes
    llm_batch_size = plan.llm_batch_size or runtime.DEFAULT_LLM_BATCH_SIZE
    llm_batch = llm_batch_size * seq * (4 * d + 2 * shape.d_mlp) * llm_bytes
    llm_key = _matmul_key(plan.device, plan.llm_dtype, plan.tf32)
    sae_params = 2 * d * d_sae + d_sae + d
    sae_state = n_saes * 16 * sae_params
    step_workspace = STEP_WORKSPACE * preset.batch_size * d_sae * 4
    corpus_tokens = CORPUS_TOKENS.get(plan.corpus, float("nan"))
    if plan.activation_source == "stream":
        wanted = preset.train_tokens / plan.epochs
        unique = wanted if corpus_tokens is None or math.isnan(corpus_tokens) else min(wanted, corpus_tokens)
    else:
        wanted = float(preset.cache_tokens) * rows_per_token
        unique = wanted if corpus_tokens is None or math.isnan(corpus_tokens) else min(wanted, corpus_tokens)
    counts = {"unique": unique, "epochs": preset.train_tokens / unique, "corpus": corpus_tokens}
    per_token_layer = 2 * shape.forward_params(plan.layer)
    out: list[Stage] = []
    if plan.activation_source == "cache":
        cache_tokens = unique / rows_per_token
        out.append(
            Stage(
                "cache",
                f"one LM pass over {_tokens(cache_tokens)} tokens up to layer {plan.layer}, stored as "
                f"{plan.cache_dtype}",
                ((per_token_layer * cache_tokens, llm_key),),
                llm_weights + llm_batch,
                disk_bytes=unique * d * _BYTES[plan.cache_dtype],
            )
        )
    # a stream keeps the LM, one LM batch and the shuffle buffer (its rows and their shuffled copy) on the device
    stream_resident = llm_weights + llm_batch + 2 * runtime.STREAM_BUFFER_TOKENS * d * 4
    lm_in_training = 0.0
    if plan.activation_source == "stream":
        lm_in_training = per_token_layer * preset.train_tokens / rows_per_token
    encoder_key = _matmul_key(plan.device, "bfloat16" if plan.bf16_training else "float32", plan.tf32)
    train_flops = n_saes * preset.train_tokens * SAE_STEP_COST * 2 * d * d_sae
    source = (
        f"streamed from the LM ({_tokens(preset.train_tokens / rows_per_token)} tokens through blocks 0..{plan.layer}"
        f", shuffled in a buffer of {runtime.STREAM_BUFFER_TOKENS:,} rows)"
        if plan.activation_source == "stream"
        else "read from the cache (the LM is moved off the GPU meanwhile)"
    )
    out.append(
        Stage(
            "train",
            f"{n_saes} SAE(s) x {preset.total_steps:,} steps of {preset.batch_size:,} (d_sae {d_sae:,}); "
            f"activations {source}",
            ((train_flops, encoder_key), (lm_in_training, llm_key)),
            sae_state + step_workspace + (stream_resident if plan.activation_source == "stream" else 0),
        )
    )
    n_ce = (2 + n_saes) * preset.eval_tokens * 2 * shape.forward_params(None)
    heldout = preset.heldout_tokens * per_token_layer
    eval_batch = plan.llm_batch_size or _EVAL_BATCH_SIZE
    logits = eval_batch * seq * shape.vocab_size * 4 * 3
    out.append(
        Stage(
            "evaluate",
            f"held-out cache ({_tokens(preset.heldout_tokens)} tokens) + core CE/KL: {2 + n_saes} full passes over "
            f"{_tokens(preset.eval_tokens)} tokens ({EVAL_COST_NOTE})",
            ((n_ce + heldout, llm_key),),
            llm_weights + llm_batch + logits + n_saes * 4 * sae_params,
            disk_bytes=preset.heldout_tokens * d * 4,
        )
    )
    return out, counts


def format_plan(plan: RunPlan, *, notes: Sequence[str] = ()) -> str:
    """The plan, its cost per stage and the assumptions, as printed by `--dry-run`."""
    shape = model_shape(plan.model, plan.model_path)
    saes = planned_saes(plan)
    stage_list, counts = stages(plan, shape, len(saes))
    preset = plan.preset
    lines = [
        f"dry run: {plan.model.key} layer {plan.layer}, preset {preset.name}, corpus {plan.corpus}, device "
        f"{plan.device}",
        f"model: d_model {shape.d_model}, {shape.n_layers} layers, vocab {shape.vocab_size:,}, d_mlp {shape.d_mlp}, "
        f"{shape.n_params / 1e9:.2f}B parameters ({shape.source}); computes in {plan.llm_dtype}"
        + (", TF32 matmuls" if plan.tf32 else ""),
        f"SAEs to train ({len(saes)}): {', '.join(saes)}",
        f"evaluations ({len(plan.evals)}): {', '.join(plan.evals)}",
        f"training tokens per SAE: {preset.train_tokens:,} ({preset.total_steps:,} steps x {preset.batch_size:,})",
    ]
    unique, epochs, corpus = counts["unique"], counts["epochs"], counts["corpus"]
    corpus_text = (
        "larger than the budget"
        if corpus is None
        else ("size known once tokenised" if math.isnan(corpus) else f"about {_tokens(corpus)} tokens")
    )
    lines.append(
        f"activations: {plan.activation_source}; unique tokens {_tokens(unique)}, {epochs:.2f} epoch(s) "
        f"(corpus {plan.corpus}: {corpus_text})"
    )
    if epochs > runtime.MAX_EPOCHS and not plan.allow_repeats:
        lines.append(
            f"  -> this run would stop before any work: more than {runtime.MAX_EPOCHS:g} epochs without --allow-repeats"
        )
    lines.append("stages (estimates, not measurements):")
    total = 0.0
    for stage in stage_list:
        seconds = stage.seconds()
        total += seconds
        extra = f", disk {_gb(stage.disk_bytes)}" if stage.disk_bytes else ""
        parts = [_duration(f / ASSUMED_FLOPS.get(key, ASSUMED_FLOPS[("cpu", "float32")])) for f, key in stage.work if f]
        split = f" ({' SAE + '.join(parts)} LM)" if len(parts) == 2 else ""
        lines.append(
            f"  {stage.name:<9} {_duration(seconds):>8}{split}  GPU/device memory ~{_gb(stage.gpu_bytes)}{extra}: "
            f"{stage.what}"
        )
    lines.append(f"  total     {_duration(total):>8}")
    rates = ", ".join(
        f"{dtype} {ASSUMED_FLOPS[(kind, dtype)] / 1e12:g}"
        for kind, dtype in ASSUMED_FLOPS
        if kind == runtime.device_type(plan.device)
    )
    lines += [
        "assumptions:",
        "  LM pass = 2 x parameters met x tokens FLOPs (blocks 0..L for layer-L activations; all blocks + LM head "
        "for logits)",
        f"  SAE step = {SAE_STEP_COST:g} x encoder matmul (2 d_in d_sae FLOPs/token; measured ratio on CPU)",
        f"  sustained TFLOP/s on {runtime.device_type(plan.device)} (assumed, not measured): {rates}",
        "  memory: LM weights in its dtype + one LM batch ((4 d_model + 2 d_mlp) values/token); per SAE 16 bytes x "
        f"parameters (fp32 weights, grads, Adam), all resident; step workspace {STEP_WORKSPACE} x batch x d_sae fp32;"
        " a stream adds the LM and its shuffle buffer (2 x rows x d_model fp32)",
    ]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)
