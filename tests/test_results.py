"""The results layout and its one reader: SAE results and baselines come back typed and apart, unreadable files
are skipped with a warning, and "already evaluated" means "scored this very checkpoint"."""

from __future__ import annotations

import json
import logging

import pytest

from abstopk_eval.errors import UserError
from abstopk_eval.results import (
    BASELINES_DIR,
    ResultKind,
    baseline_path,
    current_results,
    iter_results,
    result_path,
)


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _layout(root) -> None:
    _write(
        result_path(root, "m", 3, "topk_k8_s0", "core"),
        {"provenance": {"sae_weights_sha256": "aaa"}, "identity": {"hash": "h1"}},
    )
    _write(result_path(root, "m", 3, "topk_k8_s0", "steering"), {"provenance": {"variant": "topk"}})
    # an SAE may be called "dim": it stays an SAE, distinct from steering's dim baseline
    _write(result_path(root, "m", 3, "dim", "steering"), {"provenance": {"variant": "dim-sae"}})
    _write(baseline_path(root, "m", 3, "steering", "dim"), {"provenance": {"variant": "dim"}})
    _write(baseline_path(root, "m", 3, "steering", "original"), {"provenance": {"variant": "original"}})
    _write(result_path(root, "other", 7, "relu_s0", "core"), {"provenance": {}})


def _keys(records):
    return [(r.model, r.layer, r.kind, r.name, r.eval_name) for r in records]


def test_iterator_yields_sae_results_and_baselines_with_their_kind(tmp_path):
    _layout(tmp_path)
    records = list(iter_results(tmp_path))
    assert sorted(_keys(records), key=str) == sorted(
        [
            ("m", 3, ResultKind.SAE, "topk_k8_s0", "core"),
            ("m", 3, ResultKind.SAE, "topk_k8_s0", "steering"),
            ("m", 3, ResultKind.SAE, "dim", "steering"),
            ("m", 3, ResultKind.BASELINE, "dim", "steering"),
            ("m", 3, ResultKind.BASELINE, "original", "steering"),
            ("other", 7, ResultKind.SAE, "relu_s0", "core"),
        ],
        key=str,
    )
    by_key = {(r.kind, r.name, r.eval_name): r for r in records if r.model == "m"}
    assert by_key[ResultKind.BASELINE, "dim", "steering"].data["provenance"]["variant"] == "dim"
    assert by_key[ResultKind.SAE, "dim", "steering"].data["provenance"]["variant"] == "dim-sae"
    assert by_key[ResultKind.BASELINE, "original", "steering"].path == baseline_path(
        tmp_path, "m", 3, "steering", "original"
    )
    assert [r.path for r in records] == sorted(r.path for r in records)  # path order, reproducible reports


def test_iterator_filters_by_kind_evaluation_model_and_layer(tmp_path):
    _layout(tmp_path)
    baselines = list(iter_results(tmp_path, kind=ResultKind.BASELINE))
    assert {(r.name, r.eval_name) for r in baselines} == {("dim", "steering"), ("original", "steering")}
    steering_saes = list(iter_results(tmp_path, kind=ResultKind.SAE, eval_name="steering"))
    assert {r.name for r in steering_saes} == {"topk_k8_s0", "dim"}
    assert {r.name for r in iter_results(tmp_path, model="other")} == {"relu_s0"}
    assert {r.model for r in iter_results(tmp_path, layer=3)} == {"m"}
    assert list(iter_results(tmp_path, model="m", layer=7)) == []


def test_a_baseline_is_never_yielded_as_an_sae(tmp_path):
    _layout(tmp_path)
    # a stray file directly under baselines/ (the old layout wrote <layer>/<method>/<eval>.json) is no SAE result
    _write(tmp_path / "m" / "layer_3" / BASELINES_DIR / "steering.json", {"provenance": {}})
    saes = list(iter_results(tmp_path, kind=ResultKind.SAE))
    assert all(BASELINES_DIR not in r.path.relative_to(tmp_path).parts for r in saes)
    assert BASELINES_DIR not in {r.name for r in iter_results(tmp_path)}
    with pytest.raises(UserError, match="reserved"):
        result_path(tmp_path, "m", 3, BASELINES_DIR, "core")


def test_unreadable_files_are_skipped_with_one_warning_each(tmp_path, caplog):
    _layout(tmp_path)
    truncated = result_path(tmp_path, "m", 3, "relu_s0", "core")
    _write(truncated, '{"provenance": ')
    not_an_object = baseline_path(tmp_path, "m", 3, "steering", "broken")
    _write(not_an_object, "[1, 2]")
    with caplog.at_level(logging.WARNING, logger="abstopk_eval.results"):
        records = list(iter_results(tmp_path))
    assert {r.path for r in records}.isdisjoint({truncated, not_an_object})
    assert len(records) == 6  # every readable one still comes back
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(warnings) == sorted(f"skipping unreadable result {p}" for p in (truncated, not_an_object))


def test_current_results_are_those_of_the_same_identity_and_checkpoint(tmp_path):
    _layout(tmp_path)
    key = ("topk_k8_s0", "core", None)
    assert current_results(tmp_path, "m", 3, {key: ("h1", "aaa")}) == {key}
    assert current_results(tmp_path, "m", 3, {key: ("h1", "retrained")}) == set()
    assert current_results(tmp_path, "m", 3, {key: ("h2", "aaa")}) == set()  # another corpus, preset, option set...
    assert current_results(tmp_path, "m", 3, {key: ("h1", None)}) == set()  # no checkpoint: nothing is current
    # a result under other options sits in its own file and is current only for that option set
    tagged = result_path(tmp_path, "m", 3, "topk_k8_s0", "core", "0123abcd")
    _write(tagged, {"provenance": {"sae_weights_sha256": "aaa"}, "identity": {"hash": "h3"}})
    assert tagged.name == "core@0123abcd.json"
    both = {key: ("h1", "aaa"), ("topk_k8_s0", "core", "0123abcd"): ("h3", "aaa")}
    assert current_results(tmp_path, "m", 3, both) == set(both)
    assert current_results(tmp_path, "m", 3, {key: ("h3", "aaa")}) == set()
    # the steering result records no digest, and a baseline never counts for an SAE of the same name
    assert current_results(tmp_path, "m", 3, {("dim", "steering", None): ("x", None)}) == set()
    assert current_results(tmp_path, "m", 3, {("original", "steering", None): ("x", "x")}) == set()
