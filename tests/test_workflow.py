"""The run workflow's bookkeeping, with the model, the SAEs and the evaluations faked."""

from __future__ import annotations

import torch

from tests.helpers.models import D_MODEL


def test_workflow_writes_extra_result_keys_without_a_weights_digest(tmp_path, monkeypatch):
    """evaluate_missing writes an evaluation's extra entries (steering's "dim", "original") next to the SAEs'."""
    from types import SimpleNamespace

    from abstopk_eval import workflow
    from abstopk_eval.config import get_preset
    from abstopk_eval.training.trainer import TrainJob

    job = TrainJob("abstopk", 4, 0, "smoke", tmp_path / "runs" / "abstopk_k4_s0_smoke")
    made = {}

    def fake_run(ctx, saes):
        made.update({key: SimpleNamespace(provenance={"sae_id": key}) for key in [*saes, "dim", "original"]})
        return dict(made)

    written = {}
    monkeypatch.setattr(workflow, "get_eval", lambda name: SimpleNamespace(name=name, run=fake_run))
    monkeypatch.setattr(workflow, "load_sae", lambda *a, **k: object())
    monkeypatch.setattr(workflow, "checkpoint_digest", lambda j: "abc123")
    monkeypatch.setattr(workflow, "write_eval_output", lambda path, out: written.__setitem__(path, out))
    heldout = SimpleNamespace(
        tokens=torch.zeros(4, 8, dtype=torch.long),
        seq_len=8,
        n_tokens=32,
        info=SimpleNamespace(name="t", source="s"),
        provenance=dict,
    )
    plan = SimpleNamespace(
        preset=get_preset("smoke"),
        results_dir=tmp_path / "results",
        device="cpu",
        model=SimpleNamespace(key="m", hf_id="m", d_model=D_MODEL),
        layer=1,
    )
    session = SimpleNamespace(
        plan=plan,
        tokens=lambda split, n: heldout,
        cache=lambda p, n: SimpleNamespace(activations=[]),
        provenance=dict,
        adapter=None,
    )
    workflow.evaluate_missing(session, {"steering": [job]})
    paths = {p.relative_to(tmp_path / "results").as_posix(): out for p, out in written.items()}
    assert set(paths) == {f"m/layer_1/{k}/steering.json" for k in (job.sae_id, "dim", "original")}
    assert paths[f"m/layer_1/{job.sae_id}/steering.json"].provenance["sae_weights_sha256"] == "abc123"
    assert "sae_weights_sha256" not in paths["m/layer_1/dim/steering.json"].provenance
