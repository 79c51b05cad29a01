"""`python -m abstopk_eval.report --paper`: Table 2 with published values beside ours, Figures 2-4 data as
markdown / CSV / LaTeX / PNG, and an index with sources, proxies and links (on fabricated results files)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from abstopk_eval import paper_report, report
from abstopk_eval.paper_values import ALL_VALUES


def _write(results: Path, model: str, layer: int, sae: str, eval_name: str, metrics: dict, prov: dict, **extra) -> None:
    path = results / model / f"layer_{layer}" / sae / f"{eval_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"eval_type_id": eval_name, "eval_result_metrics": metrics, "provenance": prov, **extra})
    )


def _fabricate(results: Path) -> None:
    versions = {"torch": "2.13.0", "sae-lens": "6.54.12"}
    for variant, base in (("batch-abstopk", 0.30), ("topk", 0.25), ("jumprelu", 0.27)):
        for k in (128, 256) if variant != "jumprelu" else (256,):
            for seed in (0, 1):
                sae = f"{variant}_k{k}_s{seed}_paper" if variant != "jumprelu" else f"{variant}_s{seed}_paper"
                prov = {
                    "model": "qwen3-4b",
                    "model_hf_id": "Qwen/Qwen3-4B",
                    "model_source": "hub",
                    "preset": "paper",
                    "corpus": "pile",
                    "variant": variant,
                    "k": k if variant != "jumprelu" else None,
                    "seed": seed,
                    "versions": versions,
                }
                curve = [{"step": s, "tokens": s * 4096, "mse": 1.0 / s, "fvu": 0.5 / s, "l0": k} for s in (1, 2, 3)]
                _write(
                    results,
                    "qwen3-4b",
                    18,
                    sae,
                    "core",
                    {
                        "normalised_reconstruction": {
                            "nmse": 0.1 / k + seed * 1e-4,
                            "fvu": 0.2,
                            "loss_recovered": 0.9 + k / 1e4,
                        },
                        "sparsity": {"l0": k},
                    },
                    prov,
                    eval_result_unstructured={"training_curve": curve},
                    eval_config={"dataset": "pile held-out"},
                )
                _write(
                    results,
                    "qwen3-4b",
                    18,
                    sae,
                    "unlearning",
                    {"unlearning": {"unlearning_score": 0.1 + 0.02 * seed}},
                    prov,
                )
                _write(
                    results,
                    "qwen3-4b",
                    18,
                    sae,
                    "absorption",
                    {"mean": {"mean_absorption_fraction_score": 0.2, "one_minus_absorption": 0.8}},
                    prov,
                )
                _write(
                    results,
                    "qwen3-4b",
                    18,
                    sae,
                    "scr",
                    {"scr_metrics": {"scr_metric_threshold_20": base + 0.01 * seed}},
                    prov,
                    eval_config={"dataset_source": "offline"},
                    dataset_cards=[{"name": "domain-sentiment", "source": "vaderSentiment 3.3.2"}],
                )


def _fabricate_inference_options(results: Path) -> None:
    """core@<tag> results: an inference-k sweep of topk k=128 (both seeds), batch inference of batch-abstopk."""
    for seed in (0, 1):
        sae = f"topk_k128_s{seed}_paper"
        prov = {"variant": "topk", "k": 128, "seed": seed, "preset": "paper"}
        sweep = [
            {"inference_k": k, "l0": k, "nmse": 0.8 / k, "nmse_per_token_mean": 1 / k, "loss_recovered": 0.9}
            for k in (16, 32)
        ]
        _write(
            results,
            "qwen3-4b",
            18,
            f"{sae}",
            "core@aaaa1111",
            {"sparsity": {"l0": 128}},
            prov,
            eval_result_unstructured={"inference": {"option": "threshold"}, "inference_k_sweep": sweep},
        )
    prov = {"variant": "batch-abstopk", "k": 256, "seed": 0, "preset": "paper"}
    metrics = {"normalised_reconstruction": {"nmse": 1e-4, "loss_recovered": 0.95}, "sparsity": {"l0": 256.0}}
    _write(
        results,
        "qwen3-4b",
        18,
        "batch-abstopk_k256_s0_paper",
        "core@bbbb2222",
        metrics,
        prov,
        eval_result_unstructured={"inference": {"option": "batch", "rule": "batch top-(k*B), k=256", "k": 256}},
    )


def test_paper_tables_figures_and_index(tmp_path, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    _fabricate(results)
    _fabricate_inference_options(results)
    report.main(["--paper", "--results-dir", str(results), "--reports-dir", str(reports)])
    paper = reports / "paper"
    stem = "qwen3-4b_layer18_paper"  # tables of presets other than quick name their preset
    for suffix in ("table2", "fig2_training_mse", "fig3_nmse_vs_l0", "fig4_loss_recovered_vs_l0"):
        for ext in ("md", "csv", "tex"):
            assert (paper / f"{stem}_{suffix}.{ext}").is_file(), (suffix, ext)
    for fig in ("fig2_training_mse", "fig3_nmse_vs_l0", "fig4_loss_recovered_vs_l0"):
        assert (paper / f"{stem}_{fig}.png").stat().st_size > 1000

    table = pd.read_csv(paper / f"{stem}_table2.csv")
    row = table[(table["variant"] == "batch-abstopk") & (table["k"] == 256)].iloc[0]
    assert row["SCR@20"] == 0.305 and row["SCR@20 (paper)"] == 0.35  # ours (mean of 2 seeds) beside the paper's
    assert table.loc[table["variant"] == "topk", "SCR@20 (paper)"].tolist() == [0.26, 0.26]
    assert table.loc[table["variant"] == "jumprelu", "SCR@20 (paper)"].tolist() == [0.28]
    # the paper's Unlearning and Absorption are 1 - sae_bench's score: ours converted beside ours as sae_bench's
    assert row["Unlearning (sae_bench)"] == 0.11 and abs(row["Unlearning"] - 0.89) < 1e-12
    assert row["Unlearning (paper)"] == 0.95 and row["Absorption (paper)"] == 0.79
    assert abs(row["Absorption"] - 0.8) < 1e-12 and row["Absorption (sae_bench)"] == 0.2
    assert "SCR@20 (sae_bench)" not in table  # same convention: no second column
    md = (paper / f"{stem}_table2.md").read_text()
    assert "the paper's 'Unlearning' column is 1 - sae_bench's `unlearning.unlearning_score`" in md
    assert "'SCR' column and ours are both sae_bench's `scr.scr_metric_threshold_20`" in md
    assert "0.305 ± 0.064" in md and "| 0.35" in md
    tex = (paper / f"{stem}_table2.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "batch-abstopk" in tex

    sweep = pd.read_csv(paper / f"{stem}_fig3_nmse_vs_l0.csv")
    trained = sweep[sweep["sweep"] == "training k"]
    assert sorted(trained.loc[trained["variant"] == "topk", "k"]) == [128, 256]
    assert sweep["L0"].notna().all()  # plotted against the measured L0
    # the inference-k sweep of one trained SAE (2 seeds averaged), labelled beside the training sweep
    swept = sweep[sweep["sweep"] == "inference k"]
    assert swept[["variant", "k", "inference k", "seeds"]].values.tolist() == [
        ["topk", 128, 16, 2],
        ["topk", 128, 32, 2],
    ]
    assert swept["L0"].tolist() == [16, 32] and abs(swept["nMSE"].iloc[0] - 0.05) < 1e-12
    batch = sweep[sweep["sweep"] == "training k, batch inference"]
    assert batch[["variant", "k", "seeds", "L0"]].values.tolist() == [["batch-abstopk", 256, 1, 256.0]]
    fig4 = (paper / f"{stem}_fig4_loss_recovered_vs_l0.md").read_text()
    assert "inference k" in fig4 and "batch inference" in fig4
    curves = pd.read_csv(paper / f"{stem}_fig2_training_mse.csv")
    assert len(curves) == 3 * 10  # every logged point of every SAE

    published = pd.read_csv(paper / "table1_published.csv")
    assert len(published) == 8 and published.iloc[1].to_dict() == {
        "model": "qwen3-4b",
        "layer": 18,
        "metric": "HarmBench (%)",
        "Original": 17.0,
        "JumpReLU": 79.1,
        "TopK": 78.2,
        "AbsTopK": 81.3,
        "DiM": 80.6,
    }
    values = (paper / "paper_values.md").read_text()
    assert all(v.source in values for v in ALL_VALUES)
    index = (paper / "index.md").read_text()
    assert "Table 1 (steering)" in index  # the steering renderer is skipped with a note when absent
    assert f"({stem}_table2.md)" in index and "(paper_values.md)" in index
    assert "PROXY** of the paper's SAEBench data" in index and "vaderSentiment" in index
    assert "Preset(s): paper" in index and "training budget" not in index  # a paper model at the paper preset
    assert "small offline stand-in" not in index and "instead of the paper's" not in index

    lines = paper_report.index_lines(results, reports)
    assert f"- [paper/{stem}_table2.tex](paper/{stem}_table2.tex)" in lines
    assert f"- [{stem}.md]({stem}.md)" in lines  # the per-layer report of build_reports


def test_steering_baselines_feed_table1_and_never_become_table2_rows(tmp_path):
    from abstopk_eval.results import baseline_path

    results, reports = tmp_path / "results", tmp_path / "reports"
    _fabricate(results)

    def steering(method: str, refusal: float) -> dict:
        return {
            "eval_type_id": "steering",
            "eval_result_metrics": {
                "safety": {"harmbench_refusal_rate": refusal, "n_test_behaviours": 80},
                "general_ability": {"mmlu_accuracy": 0.25, "ce_loss": 3.0},
                "intervention": {"method": method, "steered": method != "original", "strength": 1.0},
            },
            "provenance": {"variant": method, "k": None, "seed": None, "preset": "paper"},
        }

    for method, refusal in (("original", 0.01), ("dim", 0.5)):
        path = baseline_path(results, "qwen3-4b", 18, "steering", method)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(steering(method, refusal)))
    paper_report.build_paper_report(results, reports)
    table = pd.read_csv(reports / "paper" / "qwen3-4b_layer18_paper_table2.csv")
    assert set(table["variant"]) == {"batch-abstopk", "topk", "jumprelu"}
    table1 = pd.read_csv(reports / "paper" / "table1_data.csv")
    refusal = table1[table1["metric"] == "HarmBench refusal rate"].iloc[0]
    assert (refusal["Original"], refusal["DiM"]) == (0.01, 0.5)
    assert "dim: None" not in (reports / "paper" / "index.md").read_text()
