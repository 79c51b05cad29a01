"""`abstopk_eval.sweep`: two shards of a small sweep together give exactly the unsharded run's results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abstopk_eval import sweep
from abstopk_eval.errors import UserError
from abstopk_eval.results import iter_results
from tests.helpers.models import TINY


def _spec(folder: Path, model_dir: Path, suffix: str = ".json") -> Path:
    spec = {
        "models": [{"model": TINY.key, "layers": [1], "model_path": str(model_dir)}],
        "variants": ["abstopk", "relu"],
        "k": [4],
        "seeds": 2,
        "evals": ["core"],
        "preset": "smoke",
    }
    path = folder / f"sweep{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(spec))
    else:
        import yaml

        path.write_text(yaml.safe_dump(spec))
    return path


def _argv(spec: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        str(spec),
        "--results-dir",
        str(out / "results"),
        "--runs-dir",
        str(out / "runs"),
        "--reports-dir",
        str(out / "reports"),
        "--cache-dir",
        str(cache),
        "-q",
        *extra,
    ]


def _results(out: Path) -> dict[str, dict]:
    root = out / "results"
    return {str(r.path.relative_to(root)): r.data["eval_result_metrics"] for r in iter_results(root)}


def test_expand_lists_one_job_per_model_layer_variant_k_seed(tmp_path, tiny_model_dir, tiny_registered, capsys):
    spec = _spec(tmp_path, tiny_model_dir, ".yaml")
    jobs = sweep.expand(sweep.load_spec_file(spec))
    assert [j.job_id for j in jobs] == [
        "tiny-test/layer_1/abstopk_k4_s0_smoke",
        "tiny-test/layer_1/abstopk_k4_s1_smoke",
        "tiny-test/layer_1/relu_s0_smoke",
        "tiny-test/layer_1/relu_s1_smoke",
    ]
    shards = [sweep.shard_jobs(jobs, i, 3) for i in range(3)]
    assert sorted(j.job_id for s in shards for j in s) == sorted(j.job_id for j in jobs)
    sweep.main([str(spec), "--list", "--shard", "1/3"])
    listed = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[2] for line in listed] == [j.job_id for j in shards[1]]


def test_two_shards_equal_the_unsharded_run(tmp_path, tiny_model_dir, tiny_registered):
    spec = _spec(tmp_path, tiny_model_dir)
    cache = tmp_path / "cache"
    sweep.main(_argv(spec, tmp_path / "whole", cache))
    shared = tmp_path / "sharded"  # both shards write into one results dir
    sweep.main(_argv(spec, shared, cache, "--shard", "0/2"))
    half = _results(shared)
    assert len(half) == 2
    sweep.main(_argv(spec, shared, cache, "--shard", "1/2"))
    whole, sharded = _results(tmp_path / "whole"), _results(shared)
    assert len(whole) == 4 and sorted(whole) == sorted(sharded)
    assert whole == sharded


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "1/0", "a/2", "1", "0/2/3"])
def test_bad_shard_specs_are_one_line_errors(shard, tmp_path, tiny_model_dir, tiny_registered, capsys):
    with pytest.raises(UserError):
        sweep.parse_shard(shard)
    spec = _spec(tmp_path, tiny_model_dir)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(spec), f"--shard={shard}", "--list"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --shard") and "\n" not in err


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"models": ["tiny-test"], "variantz": ["topk"]}, "unknown key(s) variantz"),
        ({"models": []}, "at least one model"),
        ({"models": ["nope"]}, "unknown model 'nope'"),
        ({"models": ["tiny-test"], "variants": ["sigmoid"]}, "unknown SAE variant"),
        ({"models": [{"model": "tiny-test", "layers": [7]}]}, "out of range"),
        ({"models": ["tiny-test"], "k": [0]}, "k must be integers >= 1"),
        ({"models": ["tiny-test"], "seeds": 0}, "seeds must be integers >= 1"),
    ],
)
def test_bad_specs_are_refused(spec, message, tmp_path, tiny_registered):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.expand(sweep.load_spec_file(path))


def test_datasets_key_sets_the_canonical_options_and_checks_the_hub(tmp_path, tiny_registered, monkeypatch):
    from abstopk_eval.data.canonical import LOCAL_DIR_ENV, PILE
    from tests.helpers.hf_datasets import write_local_copy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(LOCAL_DIR_ENV, str(tmp_path / "copies"))
    spec = {"models": ["tiny-test"], "evals": ["core"], "datasets": "canonical"}
    with pytest.raises(UserError, match="hub is not reachable.*core.dataset_source=pile"):
        sweep.expand(spec)
    write_local_copy(tmp_path / "copies", PILE[0], None, {"train.jsonl": [{"text": "a"}]})
    jobs = sweep.expand(spec)
    assert jobs and all(j.eval_options == {"core": {"dataset_source": "pile"}} for j in jobs)
    overridden = sweep.expand({**spec, "eval_options": {"core": {"dataset_source": "offline"}}})
    assert all(j.eval_options == {"core": {"dataset_source": "offline"}} for j in overridden)
