"""Figures of the bidirectional-feature evaluations, drawn from results/ alone.

- `<stem>_bidirectional.png`: the paper's Figure 1 per bipolar axis: mean activation of the axis's top latent
  (and of its partner latent, when the axis is split) on the two sides of the minimal pairs, one panel per SAE.
  A bidirectional latent shows one bar up and one bar down; a split axis shows two latents, one per pole.
- `<stem>_fragmentation_hist.png`: histogram of the most negative effective decoder cosine per alive atom, one
  line per SAE, with the antiparallel threshold marked.
One SAE per variant is drawn (the lowest seed at the most common k), so the panels stay readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from abstopk_eval.results import ResultKind, ResultRecord


def _one_per_variant(results: list[ResultRecord], eval_name: str) -> dict[str, dict[str, Any]]:
    """variant -> result of `eval_name` for its lowest seed at its most common k."""
    chosen: dict[str, tuple[Any, dict[str, Any]]] = {}
    by_variant: dict[str, list[ResultRecord]] = {}
    for r in results:
        if r.kind is ResultKind.SAE and r.eval_name == eval_name:
            by_variant.setdefault(r.provenance.get("variant") or r.name.split("_")[0], []).append(r)
    for variant, rows in by_variant.items():
        ks = [r.provenance.get("k") for r in rows]
        common_k = max(set(ks), key=lambda k: (ks.count(k), -1 if k is None else -k))
        rows = [r for r, k in zip(rows, ks) if k == common_k]
        best = min(rows, key=lambda r: (r.provenance.get("seed") or 0, r.name))
        chosen[variant] = (best.name, best.data)
    return {variant: {"sae": sae, "data": data} for variant, (sae, data) in sorted(chosen.items())}


def bidirectional_figure(results: list[ResultRecord], out_dir: Path, stem: str) -> str | None:
    import matplotlib.pyplot as plt

    chosen = _one_per_variant(results, "bidirectional")
    if not chosen:
        return None
    fig, axes = plt.subplots(len(chosen), 1, figsize=(11, 2.3 * len(chosen)), sharex=True, squeeze=False)
    for ax, (_variant, item) in zip(axes[:, 0], chosen.items()):
        details = item["data"].get("eval_result_details", [])
        x = np.arange(len(details))
        width = 0.2
        series = [
            ("top latent, pole A", "top_mean_a", "tab:blue", None),
            ("top latent, pole B", "top_mean_b", "tab:orange", None),
            ("partner latent, pole A", "partner_mean_a", "tab:blue", "//"),
            ("partner latent, pole B", "partner_mean_b", "tab:orange", "//"),
        ]
        for i, (label, key, color, hatch) in enumerate(series):
            values = [d.get(key) if d.get(key) is not None else 0.0 for d in details]
            ax.bar(
                x + (i - 1.5) * width,
                values,
                width,
                label=label,
                color=color,
                hatch=hatch,
                alpha=0.5 if hatch else 0.9,
                edgecolor="black",
                linewidth=0.3,
            )
        ax.axhline(0, color="black", linewidth=0.5)
        frac = item["data"].get("eval_result_metrics", {}).get("bidirectional", {}).get("frac_axes_bidirectional")
        ax.set_title(
            f"{item['sae']}: axes held by one signed latent = {frac:.2f}" if frac is not None else item["sae"],
            fontsize=9,
        )
        ax.set_ylabel("mean activation", fontsize=8)
        for j, d in enumerate(details):
            ax.annotate(d.get("category", ""), (j, ax.get_ylim()[1]), ha="center", va="top", fontsize=6)
        labels = [f"{d['axis']}\n({'/'.join(d.get('poles', []))})" for d in details]
    axes[-1, 0].set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="lower left")
    fig.suptitle(
        "Activation of each axis's top latent (and split partner) on the two sides of minimal pairs", fontsize=10
    )
    fig.tight_layout()
    name = f"{stem}_bidirectional.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def fragmentation_histogram(results: list[ResultRecord], out_dir: Path, stem: str) -> str | None:
    import matplotlib.pyplot as plt

    chosen = _one_per_variant(results, "fragmentation")
    chosen = {
        v: item for v, item in chosen.items() if (item["data"].get("eval_result_unstructured") or {}).get("histogram")
    }
    if not chosen:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    threshold = None
    for _variant, item in chosen.items():
        hist = item["data"]["eval_result_unstructured"]["histogram"]
        counts = np.asarray(hist["counts"], dtype=float)
        total = counts.sum()
        ax.stairs(counts / total if total else counts, hist["bin_edges"], label=f"{item['sae']} ({int(total)} atoms)")
        threshold = item["data"].get("eval_config", {}).get("threshold", threshold)
    if threshold is not None:
        ax.axvline(
            -threshold, color="black", linestyle="--", linewidth=0.8, label=f"antiparallel threshold -{threshold}"
        )
    ax.set_xlabel("most negative effective cosine to another atom")
    ax.set_ylabel("fraction of alive atoms")
    ax.set_title("Decoder fragmentation: how opposed each atom's closest antipode is", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"{stem}_fragmentation_hist.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name
