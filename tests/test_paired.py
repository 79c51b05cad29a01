"""Paired comparisons: a difference is called only beyond the paired bootstrap and the seeds, at matched L0."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from abstopk_eval.evals.bootstrap import paired_samples, resample_counts, weighted_sums
from abstopk_eval.paired import SaeResults, compare
from abstopk_eval.report import build_reports

UNITS = [f"question {i}" for i in range(200)]


def _scores_and_samples(correct: np.ndarray) -> tuple[float, dict]:
    """An unlearning-like score (mean of per-question 0/1 outcomes) and its bootstrap record on UNITS."""
    counts = resample_counts(len(UNITS), 500, seed=0)
    samples = weighted_sums(counts, torch.as_tensor(correct, dtype=torch.float64)) / len(UNITS)
    return float(correct.mean()), paired_samples("forget question", UNITS, 0, {"unlearning_score": samples})


def _sae(variant: str, seed: int, correct: np.ndarray, l0: float = 64.0, *, units=None) -> SaeResults:
    score, record = _scores_and_samples(correct)
    if units is not None:
        record = paired_samples(
            "forget question", units, 0, {"unlearning_score": record["samples"]["unlearning_score"]}
        )
    evals = {
        "core": {"eval_result_metrics": {"sparsity": {"l0": l0}}},
        "unlearning": {
            "eval_result_metrics": {"unlearning": {"unlearning_score": score}},
            "eval_result_unstructured": {"bootstrap_samples": record},
        },
    }
    return SaeResults(variant, 64 if "topk" in variant else None, seed, evals)


def _outcomes(rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(len(UNITS)) < rate).astype(float)


def test_a_shared_gain_on_the_same_questions_is_called_by_the_paired_bootstrap():
    """B answers a question wrongly only where A does too, plus 30 more: unpaired intervals of two rates of
    ~0.3 and ~0.45 from 200 questions nearly touch, the paired difference does not include 0."""
    saes = []
    for seed in range(3):
        a = _outcomes(0.45, seed)
        b = a.copy()
        b[np.flatnonzero(a)[:30]] = 0.0  # B loses 30 of A's questions
        saes += [_sae("abstopk", seed, a), _sae("topk", seed, b)]
    (row,) = compare(saes, "abstopk", "topk", "unlearning")
    assert row["seeds"] == 3 and row["paired bootstrap 95%"] and row["t over seeds 95%"]
    assert row["verdict"] == "abstopk better"
    assert float(row["A - B"]) == np.float64(30 / 200).round(3)


def test_identical_sae_pairs_are_within_noise_and_differences_are_zero():
    saes = []
    for seed in range(2):
        a = _outcomes(0.4, seed)
        saes += [_sae("abstopk", seed, a), _sae("topk", seed, a.copy())]
    (row,) = compare(saes, "abstopk", "topk", "unlearning")
    assert row["paired bootstrap 95%"] == "[0.000, 0.000]"
    assert row["verdict"] == "within noise"


def test_independent_noise_is_within_noise():
    saes = []
    for seed in range(3):
        saes += [_sae("abstopk", seed, _outcomes(0.4, seed)), _sae("topk", seed, _outcomes(0.4, 100 + seed))]
    (row,) = compare(saes, "abstopk", "topk", "unlearning")
    assert row["verdict"] == "within noise"


def test_no_verdict_across_sparsities_and_no_pairing_across_units():
    a, b = _outcomes(0.6, 0), _outcomes(0.1, 1)
    (row,) = compare([_sae("abstopk", 0, a, l0=64.0), _sae("relu", 0, b, l0=50.0)], "abstopk", "relu", "unlearning")
    assert row["verdict"] == "L0 differs: not compared"
    other_units = [f"other {i}" for i in range(200)]
    (row,) = compare([_sae("abstopk", 0, a), _sae("topk", 0, b, units=other_units)], "abstopk", "topk", "unlearning")
    assert row["paired bootstrap 95%"] == "" and row["verdict"] == "no interval"  # one seed, records do not pair


def test_lower_is_better_metrics_are_oriented():
    def core(variant: str, seed: int, fvu: float) -> SaeResults:
        metrics = {"sparsity": {"l0": 64.0}, "normalised_reconstruction": {"fvu": fvu}}
        return SaeResults(variant, 64, seed, {"core": {"eval_result_metrics": metrics}})

    saes = [core("abstopk", s, 0.10 + 0.001 * s) for s in range(3)] + [
        core("topk", s, 0.20 + 0.002 * s) for s in range(3)
    ]
    (row,) = compare(saes, "abstopk", "topk", "FVU")
    assert row["verdict"] == "abstopk better"  # lower FVU
    assert row["paired bootstrap 95%"] == ""  # core keeps no samples: the seeds decide


def test_each_preset_has_its_own_report_with_paired_comparisons(tmp_path):
    for preset, suffix in (("quick", ""), ("reference", "_reference")):
        for variant, rate in (("abstopk", 0.5), ("topk", 0.5)):
            for seed in range(2):
                sae = _sae(variant, seed, _outcomes(rate, seed))
                folder = tmp_path / "results" / "m" / "layer_3" / f"{variant}_k64_s{seed}{suffix}"
                folder.mkdir(parents=True)
                prov = {"model": "m", "layer": 3, "variant": variant, "k": 64, "seed": seed, "preset": preset}
                for name, data in sae.evals.items():
                    (folder / f"{name}.json").write_text(json.dumps({**data, "provenance": prov}))
    names = {p.name for p in build_reports(tmp_path / "results", tmp_path / "reports")}
    assert {"m_layer3.md", "m_layer3_reference.md", "m_layer3_paired.csv", "m_layer3_reference_paired.csv"} <= names
    paired = pd.read_csv(tmp_path / "reports" / "m_layer3_reference_paired.csv")
    assert list(paired["metric"]) == ["unlearning"] and paired["seeds"].tolist() == [2]
    assert "preset reference" in (tmp_path / "reports" / "index.md").read_text()
