"""`python -m abstopk_eval.verify`: each kind of wrong result is found, named and fails the exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from abstopk_eval import run, verify
from abstopk_eval.identity import IDENTITY_JSON, identity_hash
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.results import ResultKind, iter_results
from tests.helpers.models import TINY
from tests.helpers.runs import sae_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    MODEL_REGISTRY[TINY.key] = TINY
    tmp = tmp_path_factory.mktemp("verified")
    run.main(
        [
            *("--model", TINY.key, "--model-path", str(tiny_model_dir), "--preset", "smoke", "-q", "--no-report"),
            *("--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs")),
            *("--cache-dir", str(tmp / "cache"), "--variants", "topk", "abstopk", "--evals", "core", "fragmentation"),
        ]
    )
    yield tmp
    MODEL_REGISTRY.pop(TINY.key, None)


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished run's results and runs folders, to damage."""
    for name in ("results", "runs"):
        shutil.copytree(finished / name, tmp_path / name)
    return tmp_path


def _verify(tmp: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    try:
        verify.main([str(tmp / "results"), "--runs-dir", str(tmp / "runs"), *extra])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().out.splitlines()


def _core(tmp: Path, variant: str = "topk") -> Path:
    return sae_folder(tmp / "results", TINY.key, 1, f"{variant}_k4_s0_smoke") / "core.json"


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_fresh_run_verifies(copy, capsys):
    code, out = _verify(copy, capsys)
    assert code == 0 and out == [f"4 result file(s) in {copy / 'results'}: 4 ok"]


def test_without_the_runs_folder_weights_are_unverifiable(copy, capsys):
    shutil.rmtree(copy / "runs")
    code, out = _verify(copy, capsys)
    assert code == 0 and out[-1].endswith("4 unverifiable")


def _one_failure(copy, capsys, status: str, reason: str) -> None:
    code, out = _verify(copy, capsys)
    assert code == 1
    flagged = [line for line in out if line.startswith(f"{status}: ")]
    assert len(flagged) == 1 and reason in flagged[0], out


def test_truncated_result_is_corrupt(copy, capsys):
    core = _core(copy)
    core.write_text(core.read_text()[:500])
    _one_failure(copy, capsys, "corrupt", "unreadable")


def test_result_without_a_metric_is_corrupt(copy, capsys):
    _edit(_core(copy), lambda d: d["eval_result_metrics"]["sparsity"].pop("l0"))
    _one_failure(copy, capsys, "corrupt", "not the core schema (eval_result_metrics.sparsity.l0")


def test_edited_identity_is_corrupt(copy, capsys):
    _edit(_core(copy), lambda d: d["identity"]["config"].update(n_bootstrap=10))
    _one_failure(copy, capsys, "corrupt", "does not recompute")


def test_result_moved_to_another_folder_is_corrupt(copy, capsys):
    shutil.copy(_core(copy, "topk"), _core(copy, "abstopk"))
    _one_failure(copy, capsys, "corrupt", "another SAE")


def _older_config(data: dict) -> None:
    """As if written by a version whose default n_bootstrap was 100 (hash recomputed: a genuine old result)."""
    identity = data["identity"]
    identity["config"]["n_bootstrap"] = 100
    identity["hash"] = identity_hash({k: identity[k] for k in ("sae", "eval_data", "eval_name", "config", "version")})


def test_result_under_older_defaults_is_stale(copy, capsys):
    _edit(_core(copy), _older_config)
    _one_failure(copy, capsys, "stale", "differs from today's")


def test_marked_stale_result_is_listed_but_passes(copy, capsys):
    _edit(_core(copy), lambda d: (_older_config(d), d["identity"].update(stale_config=True)))
    code, out = _verify(copy, capsys)
    assert code == 0 and any(line.startswith("stale (known, marked): ") for line in out)


def test_retrained_checkpoint_makes_its_results_stale(copy, capsys):
    weights = sae_folder(copy / "runs", TINY.key, 1, "topk_k4_s0_smoke") / "sae" / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    code, out = _verify(copy, capsys)
    assert code == 1 and sum(line.startswith("stale: ") and "retrained" in line for line in out) == 2


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda core: (core.parent / IDENTITY_JSON).unlink(), "no identity.json"),
        (lambda core: core.rename(core.parent / "nope.json"), "no evaluation is named 'nope'"),
        (lambda core: (core.parent / ".core.json.x1y2.tmp").write_text("{"), "temporary file"),
    ],
)
def test_orphaned_results(copy, capsys, damage, reason):
    damage(_core(copy))
    code, out = _verify(copy, capsys)
    assert code == 1 and any(line.startswith("orphaned: ") and reason in line for line in out), out


def test_the_committed_results_verify():
    """results/ in git: every result is intact; only the ones marked stale by the migration are stale."""
    verdicts = verify.verify(REPO / "results", None)
    assert verdicts and all(v.status in (verify.UNVERIFIABLE, verify.STALE_MARKED) for v in verdicts)
    n_results = sum(1 for _ in iter_results(REPO / "results", kind=ResultKind.SAE))
    assert len(verdicts) >= n_results
