"""The run workflow's bookkeeping, with the model, the SAEs and the evaluations faked."""

from __future__ import annotations

import torch

from abstopk_eval.identity import CorpusIdentity, EvalDataIdentity, ModelIdentity
from tests.helpers.models import D_MODEL


def test_workflow_writes_baselines_without_a_weights_digest(tmp_path, monkeypatch):
    """workflow.evaluate writes an evaluation's baselines (steering's "dim", "original") as the layer's baselines;
    only the SAEs' results carry a weights digest."""
    from types import SimpleNamespace

    from abstopk_eval import workflow
    from abstopk_eval.config import get_preset

    sae_dir = tmp_path / "runs" / "abstopk_k4_s0_smoke" / "sae"
    sae_dir.mkdir(parents=True)
    (sae_dir / "sae_weights.safetensors").write_bytes(b"weights")
    target = workflow.EvalTarget("abstopk_k4_s0_smoke-00000000", sae_dir, identity={"variant": "abstopk", "hash": "h"})

    def fake_run(ctx, saes):
        made = {key: SimpleNamespace(provenance=ctx.sae_provenance.get(key)) for key in [*saes, "dim", "original"]}
        for method in ("dim", "original"):
            ctx.add_baseline("steering", method, made[method])
        return {key: made[key] for key in saes}

    written = {}
    monkeypatch.setattr(workflow, "get_eval", lambda name: SimpleNamespace(name=name, run=fake_run))
    monkeypatch.setattr(workflow, "load_sae", lambda *a, **k: None)
    monkeypatch.setattr(workflow, "write_eval_output", lambda path, out, **k: written.__setitem__(path, out))
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
        evals=["steering"],
        eval_options={},
        force_rerun=False,
        llm_batch_size=None,
        cache_dir=tmp_path / "cache",
    )
    model = ModelIdentity(key="m", weights="test")
    corpus = CorpusIdentity(name="t", version="v", seq_len=8, heldout_fraction=0.05)
    ids = workflow.RunIdentities(model, corpus, EvalDataIdentity(model, 1, corpus, plan.preset.eval_identity()))
    session = SimpleNamespace(
        ids=ids,
        plan=plan,
        tokens=lambda split, n: heldout,
        cache=lambda p, n: SimpleNamespace(activations=[]),
        provenance=lambda **fields: {},
        adapter=None,
        cache_root=tmp_path / "cache",
    )
    workflow.evaluate(plan, [target], session)
    paths = {p.relative_to(tmp_path / "results").as_posix(): out for p, out in written.items()}
    assert set(paths) == {
        f"m/layer_1/{target.sae_id}/steering.json",
        *(f"m/layer_1/baselines/steering/{k}.json" for k in ("dim", "original")),
    }
    digest = paths[f"m/layer_1/{target.sae_id}/steering.json"].provenance.sae_weights_sha256
    assert digest == target.digest() and len(digest) == 64
    assert paths["m/layer_1/baselines/steering/dim.json"].provenance is None
