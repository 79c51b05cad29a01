"""A run's session attaches the on-disk model-pass cache: a rerun (`--force-rerun`) of core and sparse probing
on the tiny Llama makes no full model pass (no `activations`, no plain `logits` call) and writes the same
metrics as the first run."""

from __future__ import annotations

import json

from abstopk_eval import run
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.runs import sae_folder, tiny_run_argv


def _metrics(results, sae_id: str) -> dict:
    """Both results' metrics, and their eval ids (new ones when the evaluation ran again)."""
    folder = sae_folder(results, "llama", 1, sae_id)
    core = json.loads((folder / "core.json").read_text())
    (probing_file,) = folder.glob("sparse_probing@*.json")
    probing = json.loads(probing_file.read_text())
    return {
        "core": core["eval_result_metrics"],
        "probing": probing["eval_result_metrics"],
        "ids": {core["eval_id"], probing["eval_id"]},
    }


def test_a_rerun_takes_every_sae_independent_pass_from_the_cache(tiny_model_dirs, tmp_path, monkeypatch):
    argv = tiny_run_argv(tiny_model_dirs["llama"], tmp_path)
    run.main(argv)
    first = {sid: _metrics(tmp_path / "results", sid) for sid in ("topk_k3_s0_smoke", "abstopk_k3_s0_smoke")}
    (folder,) = (tmp_path / "cache" / "model_passes").glob("llama-*")
    assert {p.name for p in (folder / "layer_1").iterdir()} >= {"core-clean", "core-spliced", "pooled-residuals"}
    assert json.loads((folder / "identity.json").read_text())["model"]["weights"].startswith("local:")

    calls: list[str] = []
    for name in ("activations", "logits"):
        original = getattr(ModelAdapter, name)
        monkeypatch.setattr(
            ModelAdapter, name, lambda self, *a, _n=name, _f=original, **k: calls.append(_n) or _f(self, *a, **k)
        )
    run.main([*argv, "--force-rerun"])
    assert calls == []
    for sid, metrics in first.items():
        again = _metrics(tmp_path / "results", sid)
        assert again.pop("ids").isdisjoint(metrics.pop("ids"))  # both evaluations ran again
        assert again == metrics
