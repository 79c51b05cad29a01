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
and is the unsteered model. Refusal is judged by the judge each block names (`steering.judge`: offline the
refusal-substring judge, whose accuracy on labelled responses is given below; with the hub HarmBench's classifier,
refusal = 1 - its attack success rate). **MMLU is near chance (0.25) for a 135M-parameter model**, so its
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
    """Accuracy of the offline refusal judge, before and after the fix, with 95% Wilson intervals: on the held-out
    labelled responses (never used to choose a phrase) and on the first set (partly used)."""
    from abstopk_eval.evals.steering.judge import holdout_accuracy, is_refusal, is_refusal_arditi, judge_accuracy

    try:
        held, dev = (
            holdout_accuracy(),
            {"before": judge_accuracy(is_refusal_arditi), "after": judge_accuracy(is_refusal)},
        )
    except (OSError, ValueError):
        return ""

    def acc(c: dict[str, Any]) -> str:
        low, high = c["accuracy_ci95"]
        return f"{c['accuracy']:.2f} [{low:.2f}, {high:.2f}]"

    def groups(c: dict[str, Any]) -> str:
        return ", ".join(f"{name} {g['n']}: {acc(g)}" for name, g in c["by_group"].items())

    h_before, h_after = held["before"], held["after"]
    return (
        "Offline refusal judge (`judge=substring`: typographic apostrophes and quotes folded to ASCII, Arditi et "
        "al.'s list plus validated phrasings, an apology *for* something not a decline), accuracy with 95% Wilson "
        f"interval. Held-out labelled responses (`evals/steering/refusal_labels_holdout.jsonl`, never used to choose "
        f"a phrase), {h_after['all']['n']} rows: before the fix (Arditi et al.'s list as they match it) "
        f"{acc(h_before['all'])} ({groups(h_before['all'])}), after {acc(h_after['all'])} ({groups(h_after['all'])}); "
        f"on its {h_after['real_responses']['n']} real model responses {acc(h_before['real_responses'])} before, "
        f"{acc(h_after['real_responses'])} after (recall {h_before['real_responses']['recall']:.2f} -> "
        f"{h_after['real_responses']['recall']:.2f}). First labelled set (`refusal_labels.jsonl`, "
        f"{dev['after']['n']} rows, partly used to choose the phrases): {acc(dev['before'])} before, "
        f"{acc(dev['after'])} after. The substring judge misses implicit refusals by construction, so steered "
        "refusal rates stay noisy; `python -m abstopk_eval.evals.steering.judge_report` prints every group."
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
            f"SAE intervention: {cfg.get('sae_intervention')}; refusal judge: "
            f"{cfg.get('judge', 'arditi_substring (results from before the judge fix)')}",
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
