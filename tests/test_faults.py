"""Crash safety of a whole run: SIGKILL at each fault point (`abstopk_eval.faults`), then rerun; the rerun finishes
with results identical to an uninterrupted run, and nothing a killed process left half-written is taken as valid.
A failed write (disk full) leaves the previous result intact."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from abstopk_eval import results as results_mod
from abstopk_eval import run, verify
from abstopk_eval.io import atomic_file
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.results import ResultKind, iter_results
from abstopk_eval.training.checkpoint import CHECKPOINT_JSON, TENSORS_GLOB
from tests.helpers.models import TINY
from tests.helpers.processes import killed_at
from tests.helpers.runs import sae_folder

VARIANTS = ("topk", "abstopk")
EVALS = ("core", "fragmentation")


def _argv(tmp: Path, model_dir: Path) -> list[str]:
    return [
        *("--model", TINY.key, "--model-path", str(model_dir), "--preset", "smoke", "-q", "--no-report"),
        *("--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs")),
        *("--reports-dir", str(tmp / "reports"), "--cache-dir", str(tmp / "cache")),
        *("--variants", *VARIANTS, "--evals", *EVALS),
    ]


def _same(a, b) -> bool:
    """Equal structures, floats to 1e-6 relative: an evaluation finished in the forked (killed) process reduces
    with that process's thread count, which moves float sums in the last digits. Identities, weights digests and
    everything that is not a float must be equal exactly."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _comparable(results_dir: Path) -> dict[tuple[str, str], dict]:
    """Every result, without what legitimately differs between two runs (ids, times, the run's own paths)."""
    out = {}
    for r in iter_results(results_dir, kind=ResultKind.SAE):
        unstructured = {k: v for k, v in (r.data.get("eval_result_unstructured") or {}).items() if k != "train_seconds"}
        out[r.name, r.eval_name] = {
            "metrics": r.data["eval_result_metrics"],
            "unstructured": unstructured,
            "identity": r.identity,
            "weights": r.provenance["sae_weights_sha256"],
        }
    return out


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    MODEL_REGISTRY[TINY.key] = TINY
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run.main(_argv(tmp, tiny_model_dir))
    yield _comparable(tmp / "results")
    MODEL_REGISTRY.pop(TINY.key, None)


def _kill_then_rerun(fault: str, tmp: Path, model_dir: Path, expected, check_leftovers=None) -> None:
    argv = _argv(tmp, model_dir)
    killed_at(fault, run.main, argv)
    if check_leftovers is not None:
        check_leftovers(tmp)
    for r in iter_results(tmp / "results"):  # whatever the killed run left that reads as a result is complete
        assert r.path.suffix == ".json" and "eval_result_metrics" in r.data
    run.main(argv)
    assert _same(_comparable(tmp / "results"), expected)
    assert not list((tmp / "runs").rglob(CHECKPOINT_JSON)) and not list((tmp / "runs").rglob(TENSORS_GLOB))
    verdicts = verify.verify(tmp / "results", tmp / "runs")  # no leftover of the killed run is listed
    assert [(v.path, v.status) for v in verdicts if v.status != verify.OK] == [] and len(verdicts) == 4


def _no_cache(tmp: Path) -> None:
    layer = tmp / "cache" / "activations" / TINY.key / "layer_1"
    assert [p for p in layer.iterdir() if not p.name.startswith(".")] == []  # only the staging dir and the lock


def test_killed_while_caching_activations(uninterrupted, tiny_model_dir, tmp_path):
    _kill_then_rerun("cache-build:2", tmp_path, tiny_model_dir, uninterrupted, _no_cache)


def _checkpoint_at(step: int):
    def check(tmp: Path) -> None:
        for variant in VARIANTS:
            folder = sae_folder(tmp / "runs", TINY.key, 1, f"{variant}_k4_s0_smoke")
            assert json.loads((folder / CHECKPOINT_JSON).read_text())["step"] == step
            assert not (folder / "sae").exists()

    return check


def test_killed_while_training(uninterrupted, tiny_model_dir, tmp_path):
    # smoke preset: 32 steps, a checkpoint every 8: killed after step 20, the rerun resumes from step 16
    _kill_then_rerun("train-step:20", tmp_path, tiny_model_dir, uninterrupted, _checkpoint_at(16))


def test_killed_between_a_checkpoints_tensors_and_its_json(uninterrupted, tiny_model_dir, tmp_path):
    def check(tmp: Path) -> None:
        _checkpoint_at(8)(tmp)  # the second checkpoint (step 16) was not committed: the first still stands
        folder = sae_folder(tmp / "runs", TINY.key, 1, f"{VARIANTS[0]}_k4_s0_smoke")
        assert len(list(folder.glob(TENSORS_GLOB))) == 2  # the uncommitted one is ignored, then deleted

    _kill_then_rerun("checkpoint-write:3", tmp_path, tiny_model_dir, uninterrupted, check)


def test_killed_between_evaluations(uninterrupted, tiny_model_dir, tmp_path):
    def check(tmp: Path) -> None:
        found = {r.eval_name for r in iter_results(tmp / "results")}
        assert found == {"core"}

    _kill_then_rerun("eval-done=core", tmp_path, tiny_model_dir, uninterrupted, check)


def test_killed_while_writing_a_result(uninterrupted, tiny_model_dir, tmp_path):
    def check(tmp: Path) -> None:
        written = [r.name for r in iter_results(tmp / "results") if r.eval_name == "core"]
        assert len(written) == 1  # the first SAE's core.json; the second one's is a temporary file
        assert len(list((tmp / "results").rglob(".core.json.*.tmp"))) == 1

    _kill_then_rerun("atomic-write=core.json:2", tmp_path, tiny_model_dir, uninterrupted, check)


def test_a_full_disk_keeps_the_previous_result(uninterrupted, tiny_model_dir, tmp_path, monkeypatch, capsys):
    argv = _argv(tmp_path, tiny_model_dir)
    run.main(argv)
    (core,) = [r.path for r in iter_results(tmp_path / "results", eval_name="core") if r.name.startswith("topk")]
    data = json.loads(core.read_text())
    data["identity"]["hash"] = "0" * 64  # as if its evaluation config had changed: the run evaluates it again
    core.write_text(json.dumps(data))
    before = core.read_bytes()

    def full_disk(path, obj):
        with atomic_file(path) as handle:
            handle.write(b'{"eval_type_id": "core", "eval_result_')
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results_mod, "atomic_write_json", full_disk)
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    assert exit_.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("error: no space left on the device writing") and str(core) in err[0]
    assert core.read_bytes() == before and not list(core.parent.glob(".*.tmp"))
    monkeypatch.undo()
    MODEL_REGISTRY[TINY.key] = TINY
    run.main(argv)
    assert _same(_comparable(tmp_path / "results"), uninterrupted)
