"""Figures of the bidirectional-feature evaluations, drawn from results/ alone.

- `<stem>_bidirectional.png`: the paper's Figure 1 as a measurement, per bipolar axis (sentence pairs): the best
  latent's bidirectional share (sign consistency x share of the contrast) with its 95% interval, the shuffled-pole
  control's upper bound, and the split share of the two best one-pole latents, one panel per SAE.
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
    labels: list[str] = []
    for ax, (_variant, item) in zip(axes[:, 0], chosen.items()):
        details = [d for d in item["data"].get("eval_result_details", []) if d.get("context", "context") == "context"]
        x = np.arange(len(details))
        value = np.array([d.get("bidirectional_share") or 0.0 for d in details], dtype=float)
        low = np.array([d.get("ci_low", v) for d, v in zip(details, value)], dtype=float)
        high = np.array([d.get("ci_high", v) for d, v in zip(details, value)], dtype=float)
        ax.bar(
            x - 0.2,
            value,
            0.4,
            yerr=np.clip(np.stack([value - low, high - value]), 0, None),
            capsize=2,
            color="tab:blue",
            label="bidirectional share (one latent, opposite signs)",
        )
        ax.bar(
            x + 0.2,
            [d.get("split_share") or 0.0 for d in details],
            0.4,
            color="tab:orange",
            alpha=0.6,
            label="split share (two one-pole latents)",
        )
        ax.scatter(
            x - 0.2,
            [d.get("control_ci_high") or 0.0 for d in details],
            marker="_",
            s=120,
            color="black",
            label="shuffled-pole control, 95% high",
            zorder=3,
        )
        ax.axhline(0, color="black", linewidth=0.5)
        metrics = item["data"].get("eval_result_metrics", {}).get("bidirectional", {})
        share = metrics.get("bidirectional_share")
        ax.set_title(
            f"{item['sae']}: bidirectional share {share:.3f}, control {metrics.get('control_share', 0.0):.3f}"
            if share is not None
            else item["sae"],
            fontsize=9,
        )
        ax.set_ylabel("share of contrast", fontsize=8)
        labels = [f"{d['axis']}\n({'/'.join(d.get('poles', []))})" for d in details]
    axes[-1, 0].set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes[0, 0].legend(fontsize=7, ncol=3, loc="upper right")
    fig.suptitle(
        "Per bipolar axis (minimal sentence pairs): the best latent's consistency x share of the contrast", fontsize=10
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
