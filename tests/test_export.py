"""`abstopk_eval.export --sae-bench`: the committed results, exported, are read by sae_bench's own loading and
graphing functions (`graphing_utils.get_eval_results`, `get_core_results`, `plot_results`) with the values we
wrote; published SAEs keep their release and id; results without a SAEBench counterpart stay out."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from abstopk_eval import export
from abstopk_eval.results import ResultKind, iter_results

COMMITTED = Path(__file__).resolve().parents[1] / "results"
MODEL, LAYER = "gemma-3-270m", 9
RELEASE = f"abstopk-eval_{MODEL}_layer_{LAYER}"


@pytest.fixture(scope="module")
def graphing():
    """sae_bench's graphing_utils on the Agg backend (seaborn, which only its correlation plots use, is stubbed
    where it is not installed: setup.sh installs sae-bench without its dependencies)."""
    import matplotlib

    matplotlib.use("Agg")
    stubbed = importlib.util.find_spec("seaborn") is None
    if stubbed:
        sys.modules["seaborn"] = types.ModuleType("seaborn")
    from sae_bench.sae_bench_utils import graphing_utils

    yield graphing_utils
    if stubbed:
        sys.modules.pop("seaborn", None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae_bench_layout")
    export.main(["--sae-bench", str(out), "--model", MODEL, "-q"])
    return out


def _files(out: Path, folder: str) -> list[str]:
    return sorted(str(p) for p in (out / "eval_results" / folder).glob("*_eval_results.json"))


def test_layout_and_naming(exported):
    ours = [
        r for r in iter_results(COMMITTED, kind=ResultKind.SAE, model=MODEL) if r.eval_name in export.SAE_BENCH_EVALS
    ]
    written = sorted((exported / "eval_results").glob("*/*_eval_results.json"))
    assert len(written) == len(ours) > 0
    assert {p.parent.name for p in written} == set(export.SAE_BENCH_EVALS)  # fragmentation etc. stay out
    for record in ours:
        folder = export.SAE_BENCH_EVALS[record.eval_name].folder
        path = exported / "eval_results" / folder / f"{RELEASE}_{record.name}_eval_results.json"
        data = json.loads(path.read_text())
        assert data["sae_lens_release_id"] == RELEASE and data["sae_lens_id"] == record.name
        for key in ("eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics", "eval_type_id"):
            assert data[key] not in (None, {}), key
        cfg = data["sae_cfg_dict"]
        ours_cfg = record.data["sae_cfg_dict"]
        assert cfg["training_tokens"] == ours_cfg["metadata"]["train_tokens"] > 0
        assert cfg["d_sae"] == ours_cfg["d_sae"] and cfg["hook_layer"] == LAYER
        assert data["provenance"] == record.provenance


def test_sae_bench_graphing_reads_the_export(exported, graphing, tmp_path):
    core_files = _files(exported, "core")
    core = graphing.get_core_results(core_files)
    flat = graphing.get_eval_results(core_files)
    assert len(core) == len(core_files) >= 6
    classes = {v["sae_class"] for v in flat.values()}
    assert classes >= {"standard", "jumprelu", "topk", "batch_topk", "abstopk", "batch_abstopk"}
    key = f"{RELEASE}_abstopk_k64_s0-d22ad4ac"
    ours = json.loads((COMMITTED / MODEL / f"layer_{LAYER}" / "abstopk_k64_s0-d22ad4ac" / "core.json").read_text())
    assert core[key]["l0"] == ours["eval_result_metrics"]["sparsity"]["l0"]
    assert flat[key]["fvu"] == ours["eval_result_metrics"]["normalised_reconstruction"]["fvu"]
    assert (flat[key]["d_sae"], flat[key]["train_tokens"]) == ("5k", 262_144)

    expected_key = {"sparse_probing": "sae_top_1_test_accuracy", "scr": "scr_metric_threshold_20"}
    expected_key |= {"tpp": "tpp_threshold_20_total_metric", "absorption": "mean_absorption_fraction_score"}
    expected_key |= {"unlearning": "unlearning_score"}
    for folder, metric in expected_key.items():
        files = _files(exported, folder)
        results = graphing.get_eval_results(files)
        assert len(results) == len(files) >= 6 and all(metric in v for v in results.values()), folder
        sae = "abstopk_k64_s0-d22ad4ac"
        ours = json.loads((COMMITTED / MODEL / f"layer_{LAYER}" / sae / f"{folder}.json").read_text())
        category = {"sparse_probing": "sae", "scr": "scr_metrics", "tpp": "tpp_metrics", "absorption": "mean"}
        assert results[f"{RELEASE}_{sae}"][metric] == ours["eval_result_metrics"][category.get(folder, folder)][metric]
        # SAEBench's figure: L0 vs the metric, one marker per trainer class (the core file of each SAE beside it)
        cores = [f.replace(f"/{folder}/", "/core/") for f in files]
        image = tmp_path / folder
        graphing.plot_results(files, cores, folder, str(image), k=1 if folder == "sparse_probing" else 20)
        assert Path(f"{image}_2var_sae_type.png").stat().st_size > 0
    graphing.plt.close("all")
    ravel = json.loads(Path(_files(exported, "ravel")[0]).read_text())
    assert ravel["eval_type_id"] == "ravel" and "disentanglement_score" in ravel["eval_result_metrics"]["ravel"]


def test_published_sae_keeps_its_release_and_tagged_results_stay_out(tmp_path):
    source = COMMITTED / MODEL / f"layer_{LAYER}" / "topk_k64_s0-04380421"
    layer_dir = tmp_path / "results" / MODEL / f"layer_{LAYER}"
    folder = layer_dir / "ext-gemma-scope-res-layer_9-abcd1234"
    folder.mkdir(parents=True)
    data = json.loads((source / "core.json").read_text())
    data["provenance"]["external"] = {
        "sae_lens_release": "gemma-scope-res",
        "sae_lens_id": "layer_9/width_16k/average_l0_82",
        "activation": "jumprelu",
    }
    (folder / "core.json").write_text(json.dumps(data))
    (folder / "core@0badc0de.json").write_text(json.dumps(data))  # computed with non-default options
    shutil.copy(source / "fragmentation.json", folder / "fragmentation.json")
    out = tmp_path / "out"
    written = export.export_sae_bench(tmp_path / "results", out)
    assert [p.name for p in written] == ["gemma-scope-res_layer_9_width_16k_average_l0_82_eval_results.json"]
    result = json.loads(written[0].read_text())
    assert result["sae_lens_release_id"] == "gemma-scope-res"
    assert result["sae_lens_id"] == "layer_9/width_16k/average_l0_82"
    assert result["sae_cfg_dict"]["architecture"] == "jumprelu"


def test_unexportable_evaluation_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--sae-bench", str(tmp_path / "out"), "--evals", "steering"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no SAEBench counterpart for steering") and "\n" not in err
