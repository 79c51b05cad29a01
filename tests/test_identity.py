"""Run identity: everything that changes a trained SAE or a result is part of its identity, and nothing made under
another identity is reused or taken as current."""

from __future__ import annotations

import dataclasses
import json

import pytest

from abstopk_eval import run, workflow
from abstopk_eval.config import BOOKKEEPING_FIELDS, EVAL_FIELDS, PRESETS, TRAINING_FIELDS, TrainPreset
from abstopk_eval.identity import IDENTITY_JSON, TrainIdentity
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.results import ResultKind, iter_results
from tests.helpers.models import TINY


def test_every_preset_field_is_classified_once():
    fields = [f.name for f in dataclasses.fields(TrainPreset)]
    classified = [*TRAINING_FIELDS, *EVAL_FIELDS, *BOOKKEEPING_FIELDS]
    assert sorted(fields) == sorted(classified) and len(set(classified)) == len(classified)


def _plan(tiny_model_dir, tmp_path, *extra):
    args = run.build_parser().parse_args(
        ["--model", TINY.key, "--model-path", str(tiny_model_dir), "--preset", "smoke", "--no-report",
         "--cache-dir", str(tmp_path / "cache"), *extra]
    )  # fmt: skip
    return run.plan_from_args(args)


def _train_hash(plan, variant="abstopk", k=4, seed=0) -> str:
    return workflow.train_identity(plan, workflow.RunIdentities.of(plan), variant, k, seed).hash


def test_what_changes_training_changes_the_training_identity(tiny_model_dir, tiny_registered, tmp_path):
    base = _plan(tiny_model_dir, tmp_path)
    h = _train_hash(base)
    assert h == _train_hash(_plan(tiny_model_dir, tmp_path))  # deterministic
    changed = {
        "corpus": _train_hash(_plan(tiny_model_dir, tmp_path, "--corpus", "python-stdlib")),
        "dense": _train_hash(_plan(tiny_model_dir, tmp_path, "--dense-training")),
        "bf16": _train_hash(_plan(tiny_model_dir, tmp_path, "--bf16")),
        "preset": _train_hash(_plan(tiny_model_dir, tmp_path, "--preset", "quick")),
        "layer": _train_hash(_plan(tiny_model_dir, tmp_path, "--layer", "2")),
        "seed": _train_hash(base, seed=1),
        "k": _train_hash(base, k=3),
        "variant": _train_hash(base, variant="topk"),
    }
    assert len(set(changed.values()) | {h}) == len(changed) + 1, changed
    # the preset's name, its evaluation sizes and its bookkeeping change no trained SAE
    renamed = dataclasses.replace(PRESETS["smoke"], name="other", eval_tokens=999, log_every_steps=1)
    assert _train_hash(dataclasses.replace(base, preset=renamed)) == h
    # ... but the evaluation sizes change every result's identity
    ids, other_ids = (
        workflow.RunIdentities.of(base),
        workflow.RunIdentities.of(dataclasses.replace(base, preset=renamed)),
    )
    assert ids.eval_data.hash != other_ids.eval_data.hash
    # a different model folder (other weights) is another model
    assert ids.model.weights.startswith("local:") and ids.model.weights != "local:"
    # k does not enter the identity of a variant that does not use it
    assert _train_hash(base, variant="relu", k=4) == _train_hash(base, variant="relu", k=64)


def test_identities_are_readable_json(tiny_model_dir, tiny_registered, tmp_path):
    plan = _plan(tiny_model_dir, tmp_path)
    ident = workflow.train_identity(plan, workflow.RunIdentities.of(plan), "abstopk", 4, 0)
    record = ident.record()
    assert record["hash"] == ident.hash and record["variant"] == "abstopk" and record["training"]["expansion"] == 2
    assert json.loads(json.dumps(record)) == record
    assert ident.folder("abstopk_k4_s0_smoke") == f"abstopk_k4_s0_smoke-{ident.hash[:8]}"
    assert isinstance(ident, TrainIdentity)


def _argv(tmp, model_dir, *extra):
    return [
        "--model", TINY.key, "--model-path", str(model_dir), "--preset", "smoke", "-q", "--no-report",
        "--variants", "abstopk", "relu", "--evals", "core",
        "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def two_corpora(tiny_model_dir, tmp_path_factory):
    """A finished run on wiki-en, then the same command with --corpus python-stdlib."""
    MODEL_REGISTRY[TINY.key] = TINY
    tmp = tmp_path_factory.mktemp("identity")
    run.main(_argv(tmp, tiny_model_dir))
    first = {p.name: p.stat().st_mtime_ns for p in (tmp / "results").rglob("*.json")}
    run.main(_argv(tmp, tiny_model_dir, "--corpus", "python-stdlib"))
    yield tmp, first
    MODEL_REGISTRY.pop(TINY.key, None)


def test_another_corpus_trains_and_evaluates_a_separate_run(two_corpora):
    tmp, first = two_corpora
    runs = sorted(p.name for p in (tmp / "runs" / TINY.key / "layer_1").iterdir())
    assert len(runs) == 4  # two variants x two corpora, none reused
    corpora = {}
    for folder in (tmp / "runs" / TINY.key / "layer_1").iterdir():
        identity = json.loads((folder / IDENTITY_JSON).read_text())
        assert folder.name.endswith(identity["hash"][:8])
        corpora.setdefault(identity["corpus"]["name"], []).append(identity["variant"])
    assert {k: sorted(v) for k, v in corpora.items()} == {
        "wiki-en": ["abstopk", "relu"],
        "python-stdlib": ["abstopk", "relu"],
    }
    results = list(iter_results(tmp / "results", kind=ResultKind.SAE, eval_name="core"))
    assert len(results) == 4 and len({r.name for r in results}) == 4
    assert sorted(r.provenance["corpus"] for r in results) == ["python-stdlib"] * 2 + ["wiki-en"] * 2
    assert len({r.identity["group"] for r in results}) == 4  # never averaged together


def test_a_rerun_of_either_reuses_everything(two_corpora, tiny_model_dir, tiny_registered, monkeypatch):
    tmp, _ = two_corpora
    monkeypatch.setattr(workflow, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    before = {p: p.stat().st_mtime_ns for p in (tmp / "results").rglob("*.json")}
    run.main(_argv(tmp, tiny_model_dir))
    run.main(_argv(tmp, tiny_model_dir, "--corpus", "python-stdlib"))
    assert {p: p.stat().st_mtime_ns for p in (tmp / "results").rglob("*.json")} == before


def test_other_options_get_their_own_result_and_leave_the_default_one(two_corpora, tiny_model_dir, tiny_registered):
    tmp, _ = two_corpora
    defaults = {r.path: r.data["eval_id"] for r in iter_results(tmp / "results", eval_name="core")}
    run.main(_argv(tmp, tiny_model_dir, "--eval-option", "core.n_bootstrap=200"))
    after = list(iter_results(tmp / "results", eval_name="core"))
    tagged = [r for r in after if r.config_tag]
    assert len(tagged) == 2 and all(r.path.name == f"core@{r.config_tag}.json" for r in tagged)
    assert all(
        r.data["eval_config"]["n_bootstrap"] == 200 and r.identity["options"] == {"n_bootstrap": 200} for r in tagged
    )
    assert {r.path: r.data["eval_id"] for r in after if not r.config_tag} == defaults  # untouched


def test_a_nested_identity_drops_its_own_fields_added_later():
    """A ModelIdentity inside a TrainIdentity leaves its unset ADDED_LATER fields out too, so adding a field to the
    model identity does not rename every run folder (it did once: `sequence_start: null` in every nested model)."""
    from abstopk_eval.identity import CorpusIdentity, ModelIdentity, TrainIdentity

    model = ModelIdentity(key="m", weights="w")
    corpus = CorpusIdentity(name="c", version="1", seq_len=8, heldout_fraction=0.05)
    train = TrainIdentity(model, 1, corpus, {"lr": 1.0}, "topk", 4, 0, "sparse", "float32")
    assert "sequence_start" not in train.as_dict()["model"] and train.as_dict()["model"] == model.as_dict()
    marked = TrainIdentity(
        ModelIdentity(key="m", weights="w", sequence_start="none"),
        1,
        corpus,
        {"lr": 1.0},
        "topk",
        4,
        0,
        "sparse",
        "float32",
    )
    assert marked.as_dict()["model"]["sequence_start"] == "none" and marked.hash != train.hash
