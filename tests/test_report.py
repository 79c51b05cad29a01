"""Reports are rebuilt from results/ alone: tables per (model, layer) and the k-sweep figure."""

from __future__ import annotations

import json

import pandas as pd

from abstopk_eval.report import build_reports


def _core(variant: str, k: int | None, fvu: float, loss_recovered: float) -> dict:
    return {
        "eval_type_id": "core",
        "eval_config": {"dataset": "test text", "n_ce_tokens": 10, "n_sparsity_tokens": 20},
        "eval_result_metrics": {
            "normalised_reconstruction": {"nmse": fvu / 10, "fvu": fvu, "loss_recovered": loss_recovered},
            "model_performance_preservation": {
                "ce_loss_with_sae": 3.0,
                "ce_loss_without_sae": 2.5,
                "ce_loss_with_ablation": 9.0,
            },
            "model_behavior_preservation": {"kl_div_with_sae": 0.1},
            "sparsity": {"l0": float(k or 50), "dead_fraction": 0.1, "frac_negative": 0.5 if "abs" in variant else 0.0},
        },
        "eval_result_unstructured": {
            "training_curve": [{"tokens": 1, "fvu": 1.0}, {"tokens": 2, "fvu": fvu}],
            "train_seconds": 1.0,
            "train_tokens": 2,
        },
        "provenance": {"model": "m", "layer": 3, "variant": variant, "k": k, "seed": 0, "versions": {"torch": "x"}},
    }


def test_report_table_and_k_sweep_figure(tmp_path):
    rows = [
        ("topk", 16, 0.3, 0.8),
        ("topk", 32, 0.2, 0.9),
        ("abstopk", 16, 0.28, 0.82),
        ("abstopk", 32, 0.19, 0.91),
        ("relu", None, 0.4, 0.7),
    ]
    for variant, k, fvu, lr in rows:
        name = f"{variant}_k{k}_s0" if k else f"{variant}_s0"
        path = tmp_path / "results" / "m" / "layer_3" / name / "core.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_core(variant, k, fvu, lr)))
    written = build_reports(tmp_path / "results", tmp_path / "reports")
    names = {p.name for p in written}
    assert {"m_layer3.md", "m_layer3.csv", "m_layer3_k_sweep.png", "m_layer3_training_curves.png"} <= names
    table = pd.read_csv(tmp_path / "reports" / "m_layer3.csv")
    assert len(table) == 5
    assert table.set_index("sae").loc["abstopk_k32_s0", "FVU"] == 0.19
    assert "[m, layer 3](m_layer3.md)" in (tmp_path / "reports" / "index.md").read_text()


def test_report_without_results_writes_an_index(tmp_path):
    (tmp_path / "results").mkdir()
    assert build_reports(tmp_path / "results", tmp_path / "reports") == []
    assert "No results yet" in (tmp_path / "reports" / "index.md").read_text()


def _write_seeds(root, variant, fvus):
    for seed, fvu in enumerate(fvus):
        data = _core(variant, 16, fvu, 1 - fvu)
        data["provenance"]["seed"] = seed
        path = root / "results" / "m" / "layer_3" / f"{variant}_k16_s{seed}" / "core.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data))


def _fvu_cells(root):
    lines = (root / "reports" / "m_layer3.md").read_text().splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| variant")).strip("|").split("|")]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in lines
        if line.startswith(("| topk", "| abstopk", "| batch-abstopk"))
    ]
    return {row[0]: row[header.index("FVU")] for row in rows}


def test_seed_means_with_intervals_and_bold_only_beyond_them(tmp_path):
    _write_seeds(tmp_path / "clear", "topk", [0.30, 0.31, 0.29])
    _write_seeds(tmp_path / "clear", "abstopk", [0.20, 0.21, 0.19])
    build_reports(tmp_path / "clear" / "results", tmp_path / "clear" / "reports")
    cells = _fvu_cells(tmp_path / "clear")
    assert cells["abstopk"].startswith("**0.200 ± 0.02") and not cells["topk"].startswith("**")
    _write_seeds(tmp_path / "overlap", "topk", [0.30, 0.10, 0.20])
    _write_seeds(tmp_path / "overlap", "abstopk", [0.19, 0.21, 0.17])
    build_reports(tmp_path / "overlap" / "results", tmp_path / "overlap" / "reports")
    assert not any(c.startswith("**") for c in _fvu_cells(tmp_path / "overlap").values())
    _write_seeds(tmp_path / "single", "topk", [0.30])
    _write_seeds(tmp_path / "single", "abstopk", [0.10])
    build_reports(tmp_path / "single" / "results", tmp_path / "single" / "reports")
    cells = _fvu_cells(tmp_path / "single")
    assert cells == {"topk": "0.300", "abstopk": "0.100"}


def _write_single_with_bootstrap(root, variant, fvu, low, high):
    data = _core(variant, 16, fvu, 1 - fvu)
    data["eval_result_metrics"]["bootstrap_ci95"] = {"fvu_low": low, "fvu_high": high}
    path = root / "results" / "m" / "layer_3" / f"{variant}_k16_s0" / "core.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))


def test_single_seed_shows_bootstrap_interval_and_bolds_only_beyond_it(tmp_path):
    _write_single_with_bootstrap(tmp_path / "clear", "topk", 0.30, 0.28, 0.32)
    _write_single_with_bootstrap(tmp_path / "clear", "abstopk", 0.20, 0.19, 0.21)
    build_reports(tmp_path / "clear" / "results", tmp_path / "clear" / "reports")
    assert _fvu_cells(tmp_path / "clear") == {"topk": "0.300 [0.280, 0.320]", "abstopk": "**0.200 [0.190, 0.210]**"}
    _write_single_with_bootstrap(tmp_path / "overlap", "topk", 0.30, 0.18, 0.42)
    _write_single_with_bootstrap(tmp_path / "overlap", "abstopk", 0.20, 0.19, 0.21)
    build_reports(tmp_path / "overlap" / "results", tmp_path / "overlap" / "reports")
    assert not any(c.startswith("**") for c in _fvu_cells(tmp_path / "overlap").values())


def test_bidirectional_and_fragmentation_figures(tmp_path):
    root = tmp_path / "results" / "m" / "layer_3"
    for variant, k in (("topk", 16), ("abstopk", 16)):
        folder = root / f"{variant}_k16_s0"
        folder.mkdir(parents=True)
        (folder / "core.json").write_text(json.dumps(_core(variant, k, 0.2, 0.9)))
        prov = {"variant": variant, "k": k, "seed": 0}
        detail = {
            "axis": "gender",
            "poles": ["male", "female"],
            "context": "context",
            "bidirectional_share": 0.4 if variant == "abstopk" else 0.0,
            "ci_low": 0.3 if variant == "abstopk" else 0.0,
            "ci_high": 0.5 if variant == "abstopk" else 0.0,
            "control_ci_high": 0.05,
            "split_share": 0.6,
        }
        (folder / "bidirectional.json").write_text(
            json.dumps(
                {
                    "eval_result_metrics": {"bidirectional": {"bidirectional_share": 0.4, "control_share": 0.01}},
                    "eval_result_details": [detail],
                    "provenance": prov,
                }
            )
        )
        (folder / "fragmentation.json").write_text(
            json.dumps(
                {
                    "eval_config": {"threshold": 0.7},
                    "provenance": prov,
                    "eval_result_unstructured": {"histogram": {"bin_edges": [-1.0, -0.5, 0.0], "counts": [3, 7]}},
                }
            )
        )
    names = {p.name for p in build_reports(tmp_path / "results", tmp_path / "reports")}
    assert {"m_layer3_bidirectional.png", "m_layer3_fragmentation_hist.png"} <= names
    assert "m_layer3_bidirectional.png" in (tmp_path / "reports" / "m_layer3.md").read_text()


def test_metric_on_fewer_seeds_than_trained_is_marked(tmp_path):
    _write_seeds(tmp_path, "topk", [0.30, 0.31, 0.29])
    (tmp_path / "results" / "m" / "layer_3" / "topk_k16_s0" / "tpp.json").write_text(
        json.dumps({"eval_result_metrics": {"tpp_metrics": {"tpp_threshold_20_total_metric": 0.25}}})
    )
    build_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "m_layer3.md").read_text()
    assert "0.250 (n=1)" in text and "0.300 ± 0.02" in text


def test_single_seed_task_metric_shows_its_bootstrap_interval(tmp_path):
    _write_seeds(tmp_path, "topk", [0.30, 0.31, 0.29])
    (tmp_path / "results" / "m" / "layer_3" / "topk_k16_s0" / "sparse_probing.json").write_text(
        json.dumps(
            {
                "eval_result_metrics": {"sae": {"sae_top_1_test_accuracy": 0.64}},
                "eval_result_unstructured": {"bootstrap_ci95": {"sae_top_1_test_accuracy": [0.6, 0.68]}},
            }
        )
    )
    build_reports(tmp_path / "results", tmp_path / "reports")
    assert "0.640 [0.600, 0.680] (n=1)" in (tmp_path / "reports" / "m_layer3.md").read_text()


def test_a_lead_at_another_sparsity_is_never_bold(tmp_path):
    """batch-abstopk's lower FVU at L0 82 vs 64 is not compared with the k = 64 SAEs; at matched L0 it is."""

    def write(root, variant, fvu, l0):
        data = _core(variant, 64, fvu, 1 - fvu)
        data["eval_result_metrics"]["sparsity"]["l0"] = l0
        data["eval_result_metrics"]["bootstrap_ci95"] = {"fvu_low": fvu - 0.005, "fvu_high": fvu + 0.005}
        path = root / "results" / "m" / "layer_3" / f"{variant}_k64_s0" / "core.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data))

    write(tmp_path / "unmatched", "topk", 0.30, 64.0)
    write(tmp_path / "unmatched", "abstopk", 0.28, 64.0)
    write(tmp_path / "unmatched", "batch-abstopk", 0.10, 82.0)
    build_reports(tmp_path / "unmatched" / "results", tmp_path / "unmatched" / "reports")
    cells = _fvu_cells(tmp_path / "unmatched")
    assert not cells["batch-abstopk"].startswith("**")  # nobody at L0 82 to beat
    assert cells["abstopk"].startswith("**")  # the best among the SAEs at L0 64
    write(tmp_path / "matched", "topk", 0.30, 64.0)
    write(tmp_path / "matched", "batch-abstopk", 0.10, 64.5)  # within 5%
    build_reports(tmp_path / "matched" / "results", tmp_path / "matched" / "reports")
    assert _fvu_cells(tmp_path / "matched")["batch-abstopk"].startswith("**")


def test_canonical_data_results_get_their_own_table_with_marked_cells(tmp_path):
    folder = tmp_path / "results" / "m" / "layer_3" / "topk_k16_s0"
    folder.mkdir(parents=True)
    (folder / "core.json").write_text(json.dumps(_core("topk", 16, 0.3, 0.8)))
    ravel = {"eval_result_metrics": {"ravel": {"disentanglement_score": 0.41}}}
    (folder / "ravel.json").write_text(json.dumps(ravel))
    canonical = {
        "eval_result_metrics": {"ravel": {"disentanglement_score": 0.27}},
        "identity": {"options": {"dataset_source": "sae_bench"}},
    }
    (folder / "ravel@0badcafe.json").write_text(json.dumps(canonical))
    other = {
        "eval_result_metrics": {"ravel": {"disentanglement_score": 0.99}},
        "identity": {"options": {"add_error": True}},
    }
    (folder / "ravel@12345678.json").write_text(json.dumps(other))
    build_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "m_layer3.md").read_text()
    main, rest = text.split("## Canonical data", 1)
    assert "0.410" in main and "0.270" not in main and "0.270\u2020" in rest and "0.410" not in rest.split("\n\n")[1]
    assert "0.300" in rest.split("Results under non-default")[0]  # core had no canonical result: its offline cell
    assert "add_error=True" in rest and "0.99" not in text  # other options: listed apart, never in a table
    table = pd.read_csv(tmp_path / "reports" / "m_layer3_canonical.csv").iloc[0]
    assert table["data ravel"] == "canonical" and table["data core"] == "offline" and table["RAVEL"] == 0.27
    assert pd.read_csv(tmp_path / "reports" / "m_layer3.csv").iloc[0]["data ravel"] == "offline"


def test_results_marked_stale_are_never_averaged_with_current_ones(tmp_path):
    """Seed 1 ran under an older evaluation config (stale_config): the table shows seed 0 alone and says one
    result was left out."""
    _write_seeds(tmp_path, "topk", [0.30, 0.10])
    stale = tmp_path / "results" / "m" / "layer_3" / "topk_k16_s1" / "core.json"
    data = json.loads(stale.read_text())
    data["identity"] = {**(data.get("identity") or {}), "stale_config": True}
    stale.write_text(json.dumps(data))
    build_reports(tmp_path / "results", tmp_path / "reports")
    assert _fvu_cells(tmp_path) == {"topk": "0.300"}
    assert (
        "Left out: 1 result(s) written under an older evaluation config"
        in (tmp_path / "reports" / "m_layer3.md").read_text()
    )
