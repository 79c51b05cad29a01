"""Paired comparisons of two variants: is one better than the other beyond the noise?

Per (comparison, metric), over the seeds both variants were trained on (matched by seed and k):
- the difference of means over seeds (A - B);
- a 95% paired bootstrap over the evaluation's units: each task evaluation keeps its headline metric's bootstrap
  samples on resamples that depend only on its units (`evals.bootstrap.paired_samples`), so A's and B's sample r
  differ only by the SAE; the per-seed differences are averaged over seeds sample by sample (evaluation-data noise
  with the trained SAEs fixed);
- a 95% t-interval over the per-seed differences (training-seed noise, and the data noise within each seed), with
  two or more seeds.

A difference is called only when every interval there is excludes 0 on the same side, and the two variants' mean
measured L0 are within `L0_TOLERANCE` of each other; otherwise the verdict says "within noise" or "L0 differs".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from abstopk_eval.columns import BY_NAME, L0, L0_TOLERANCE, Column
from abstopk_eval.evals.bootstrap import PAIRED_SAMPLES_KEY, pairable, paired_difference_samples, percentile_interval
from abstopk_eval.intervals import seed_interval

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("abstopk", "topk"),
    ("batch-abstopk", "batchtopk"),
    ("abstopk", "jumprelu"),
    ("abstopk", "relu"),
)
"""(A, B) pairs the report compares: the paper's claims are AbsTopK against TopK (per token and per batch) and
against the penalty-based SAEs."""

PAIRED_COLUMNS: tuple[str, ...] = (
    "FVU",
    "loss recovered",
    "sparse probing top-1",
    "SCR@20",
    "TPP@20",
    "1 - absorption",
    "RAVEL",
    "unlearning",
)
"""Metrics compared (the core ones have no stored samples: their verdict rests on the seeds' t-interval)."""


@dataclass(frozen=True)
class SaeResults:
    """One trained SAE's current results, by evaluation name."""

    variant: str
    k: int | None
    seed: int | None
    evals: Mapping[str, Mapping[str, Any]]

    def value(self, col: Column) -> float | None:
        return col.value(self.evals.get(col.eval))

    def samples(self, col: Column) -> dict[str, Any] | None:
        return (self.evals.get(col.eval, {}).get("eval_result_unstructured") or {}).get(PAIRED_SAMPLES_KEY)


def _matched(saes: Iterable[SaeResults], a: str, b: str) -> dict[int | None, list[tuple[SaeResults, SaeResults]]]:
    """Seed-matched (A, B) pairs per A's k; an SAE without k (ReLU, JumpReLU) matches A at every k."""
    by_key = {(s.variant, s.k, s.seed): s for s in saes}
    out: dict[int | None, list[tuple[SaeResults, SaeResults]]] = {}
    for (variant, k, seed), sae_a in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        if variant != a:
            continue
        sae_b = by_key.get((b, k, seed)) or by_key.get((b, None, seed))
        if sae_b is not None:
            out.setdefault(k, []).append((sae_a, sae_b))
    return out


def _mean_l0(saes: Iterable[SaeResults]) -> float:
    values = [v for v in (s.value(BY_NAME[L0]) for s in saes) if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _interval_text(low: float | None, high: float | None, fmt: str) -> str:
    return "" if low is None or high is None else f"[{fmt.format(low)}, {fmt.format(high)}]"


def _verdict(
    intervals: list[tuple[float, float]], higher_is_better: bool, l0: tuple[float, float], a: str, b: str
) -> str:
    """Which variant is better, when every interval of A - B excludes 0 on the same side at matched L0."""
    l0_a, l0_b = l0
    if not (np.isfinite(l0_a) and np.isfinite(l0_b)) or abs(l0_a - l0_b) > L0_TOLERANCE * max(l0_a, l0_b):
        return "L0 differs: not compared"
    if not intervals:
        return "no interval"
    oriented = intervals if higher_is_better else [(-high, -low) for low, high in intervals]
    if all(low > 0 for low, _ in oriented):
        return f"{a} better"
    if all(high < 0 for _, high in oriented):
        return f"{b} better"
    return "within noise"


def compare(saes: list[SaeResults], a: str, b: str, column: str) -> list[dict[str, Any]]:
    """Rows (one per k of A) comparing variant `a` with `b` on one report column."""
    col = BY_NAME[column]
    rows = []
    for k, pairs in _matched(saes, a, b).items():
        measured = [(sa.value(col), sb.value(col), sa, sb) for sa, sb in pairs]
        measured = [m for m in measured if m[0] is not None and m[1] is not None]
        if not measured:
            continue
        diffs = [va - vb for va, vb, _, _ in measured]
        l0_a, l0_b = _mean_l0(sa for *_, sa, _ in measured), _mean_l0(sb for *_, sb in measured)
        records = [(sa.samples(col), sb.samples(col)) for *_, sa, sb in measured]
        boot = None
        if col.bootstrap and all(pairable(ra, rb, col.bootstrap) for ra, rb in records):
            stacked = np.stack([paired_difference_samples(ra, rb, col.bootstrap) for ra, rb in records])
            boot = percentile_interval(torch.tensor(stacked.mean(0)))
        seeds = seed_interval(diffs)
        intervals = [i for i in (boot, (seeds.low, seeds.high) if seeds.half_width is not None else None) if i]
        verdict = _verdict(intervals, col.higher_is_better is not False, (l0_a, l0_b), a, b)
        rows.append(
            {
                "metric": column,
                "A": a,
                "B": b,
                "k": "" if k is None else int(k),
                "seeds": len(measured),
                "L0 A / B": f"{l0_a:.1f} / {l0_b:.1f}",
                "A - B": col.fmt.format(float(np.mean(diffs))),
                "paired bootstrap 95%": _interval_text(*(boot or (None, None)), col.fmt),
                "t over seeds 95%": _interval_text(seeds.low, seeds.high, col.fmt),
                "verdict": verdict,
            }
        )
    return rows


def paired_table(saes: list[SaeResults]) -> pd.DataFrame:
    """Every comparison of `COMPARISONS` on every column of `PAIRED_COLUMNS` that both variants have."""
    rows = [row for a, b in COMPARISONS for column in PAIRED_COLUMNS for row in compare(saes, a, b, column)]
    return pd.DataFrame(rows)


NOTES = """\
Paired comparisons: A - B is the mean over seed-matched SAEs (same seed, same k; ReLU and JumpReLU have no k). The
paired bootstrap resamples the evaluation's units (test texts, questions, entities, words) identically for both
SAEs and averages the per-seed differences: the evaluation data's noise with these trained SAEs. The t-interval
over the per-seed differences adds training-seed noise. A verdict is given only when every interval excludes 0 on
the same side and the two measured L0 are within 5%; core metrics keep no samples, so theirs rests on the seeds
alone."""
