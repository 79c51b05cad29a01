"""The paper's Table 1 from steering results: per (model, layer), Original / each SAE variant / DiM, for
MMLU accuracy, HarmBench refusal rate and held-out CE under steering."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from abstopk_eval.evals.steering.main import DIM, EVAL_NAME, ORIGINAL
from abstopk_eval.results import ResultKind, iter_results
from abstopk_eval.saes.variants import ALL_VARIANTS

# (row label, category, metric, higher is better, format)
METRICS: list[tuple[str, str, str, bool, str]] = [
    ("MMLU accuracy", "general_ability", "mmlu_accuracy", True, "{:.3f}"),
    ("HarmBench refusal rate", "safety", "harmbench_refusal_rate", True, "{:.3f}"),
    ("CE (held-out Wikipedia)", "general_ability", "ce_loss", False, "{:.3f}"),
]

NOTE = """\
Columns: the unsteered model (Original), one SAE latent per variant steered at layer L (clamped to c, paper
eq. 22, or its decoder row added), and Difference-in-Means activation addition (DiM). Steering strength and
latent were chosen on HarmBench **val** behaviours and validation text by the same rule for every method (most
validation refusals among settings whose validation CE increase is within the bound); rows are scored on the
HarmBench **test** standard behaviours, a seeded MMLU subset and held-out Wikipedia rows not used for selection.
Bold: best steered method per row (Original excluded); a method marked * found no setting within the CE bound
and is the unsteered model. Refusal is judged by Arditi et al.'s refusal-substring list (its accuracy on the
labelled responses is given below). **MMLU is near chance (0.25) for a 135M-parameter model**, so its
differences are mostly noise at this subset size; CE is the finer measure of general ability (lower is better).
"""


@dataclass
class _Layer:
    """The steering results of one (model, layer): per SAE id, and per baseline method."""

    saes: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


def _load(results_dir: Path) -> dict[tuple[str, int], _Layer]:
    by_layer: dict[tuple[str, int], _Layer] = {}
    for r in iter_results(results_dir, eval_name=EVAL_NAME):
        layer = by_layer.setdefault((r.model, r.layer), _Layer())
        (layer.saes if r.kind is ResultKind.SAE else layer.baselines)[r.name] = r.data
    return by_layer


def _columns(layer: _Layer) -> list[tuple[str, dict[str, Any]]]:
    """(column label, result) in display order: Original, variants in registry order, DiM."""
    saes = layer.saes
    variant_of = {k: (v.get("provenance") or {}).get("variant") or k.split("_")[0] for k, v in saes.items()}
    order = {v: i for i, v in enumerate(ALL_VARIANTS)}
    keys = sorted(saes, key=lambda k: (order.get(variant_of[k], len(order)), k))
    counts = pd.Series([variant_of[k] for k in keys]).value_counts() if keys else pd.Series(dtype=int)
    cols = [("Original", layer.baselines[ORIGINAL])] if ORIGINAL in layer.baselines else []
    cols += [(variant_of[k] if counts[variant_of[k]] == 1 else k, saes[k]) for k in keys]
    if DIM in layer.baselines:
        cols.append(("DiM", layer.baselines[DIM]))
    return cols


def _metric(data: dict[str, Any], category: str, metric: str) -> float | None:
    value = (data.get("eval_result_metrics") or {}).get(category, {}).get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _setting(data: dict[str, Any]) -> str:
    iv = (data.get("eval_result_metrics") or {}).get("intervention", {})
    if iv.get("method") == ORIGINAL:
        return "none"
    if not iv.get("steered"):
        return "none within bound"
    if iv.get("method") == DIM:
        return f"m={iv.get('strength'):g}"
    value = iv.get("value")
    strength = "" if iv.get("strength") is None else f", m={iv['strength']:g}"
    return (
        f"{iv.get('kind')} #{iv.get('latent')} ({iv.get('latent_rank')}, cos {iv.get('latent_cosine_to_dim', 0):+.2f}) "
        f"c={value:+.3g}{strength}"
    )


def _judge_lines() -> str:
    """Accuracy of the refusal judge on the project's labelled responses (overall and per group)."""
    from abstopk_eval.evals.steering.judge import judge_accuracy

    try:
        acc = judge_accuracy()
    except (OSError, ValueError):
        return ""
    parts = [
        f"{name} {g['n']}: accuracy {g['accuracy']:.2f} (majority label {g['majority_baseline_accuracy']:.2f}), "
        f"precision {g['precision']:.2f}, recall {g['recall']:.2f}"
        for name, g in acc["by_group"].items()
    ]
    return (
        f"Refusal judge on {acc['n']} hand-labelled responses (`evals/steering/refusal_labels.jsonl`): accuracy "
        f"{acc['accuracy']:.2f}, F1 {acc['f1']:.2f}, recall of explicit refusals {acc['recall_explicit']:.2f}; "
        + "; ".join(parts)
        + ". On steered text the judge also counts apologetic babble as refusal, so steered "
        "refusal rates are noisy in both directions."
    )


def render_table1(results_dir: Path) -> tuple[str, pd.DataFrame] | None:
    """Markdown and a long DataFrame (one row per model, layer, metric) of Table 1; None without results."""
    by_layer = _load(Path(results_dir))
    if not by_layer:
        return None
    rows: list[dict[str, Any]] = []
    blocks: list[str] = []
    for (model, layer), results in sorted(by_layer.items()):
        cols = _columns(results)
        steered = {
            col: bool((data.get("eval_result_metrics") or {}).get("intervention", {}).get("steered"))
            for col, data in cols
        }
        shown: list[dict[str, str]] = []
        for label, category, metric, higher, fmt in METRICS:
            values = {col: _metric(data, category, metric) for col, data in cols}
            rows.append({"model": model, "layer": layer, "metric": label, **values})
            candidates = {c: v for c, v in values.items() if c != "Original" and v is not None}
            best = (max if higher else min)(candidates.values()) if candidates else None
            cells = {"metric": label}
            for col, _data in cols:
                v = values[col]
                text = "" if v is None else fmt.format(v)
                if text and best is not None and col != "Original" and v == best:
                    text = f"**{text}**"
                if text and col != "Original" and not steered[col]:
                    text += "*"
                cells[col] = text
            shown.append(cells)
        shown.append({"metric": "setting", **{col: _setting(data) for col, data in cols}})
        first = next(iter([*results.saes.values(), *results.baselines.values()]))
        cfg = first.get("eval_config") or {}
        un = first.get("eval_result_unstructured") or {}
        dim_un = (results.baselines.get(DIM) or {}).get("eval_result_unstructured") or {}
        abl = dim_un.get("directional_ablation_all_layers")
        orig = results.baselines.get(ORIGINAL, {})
        n_test = _metric(orig, "safety", "n_test_behaviours") if orig else None
        lines = [
            f"#### {model}, layer {layer}",
            "",
            pd.DataFrame(shown).to_markdown(index=False, disable_numparse=True),
            "",
            f"- HarmBench test behaviours: {int(n_test) if n_test else '?'}; MMLU items: {cfg.get('n_mmlu')}; "
            f"CE bound on validation text: +{cfg.get('max_val_ce_increase')} nats; ||d|| = "
            f"{un.get('d_norm', float('nan')):.2f}; "
            f"SAE intervention: {cfg.get('sae_intervention')}",
        ]
        if abl:
            lines.append(
                f"- DiM directional ablation at every layer (check that d mediates refusal): refusal "
                f"{abl.get('harmbench_refusal_rate', float('nan')):.3f}, CE {abl.get('ce_loss', float('nan')):.3f}"
            )
        blocks.append("\n".join(lines))
    frame = pd.DataFrame(rows)
    markdown = (
        "\n\n".join(["### Table 1: steering vs Difference-in-Means", NOTE.strip(), *blocks, _judge_lines()]) + "\n"
    )
    return markdown, frame
