"""Sweep stages: cache -> train (one job per (model, layer), all its SAEs in one pass) -> evaluate, as sbatch array
scripts chained with afterok, and run locally; both give the local executor's results."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from abstopk_eval import sweep, workflow
from abstopk_eval.data import activation_cache
from abstopk_eval.results import iter_results
from tests.helpers.models import TINY

STAGES = ("cache", "train", "evaluate")


def _spec(tmp: Path, model_dir: Path) -> Path:
    spec = {
        "models": [{"model": TINY.key, "layers": [0, 1], "model_path": str(model_dir)}],
        "variants": ["topk", "abstopk"],
        "k": [4],
        "seeds": 1,
        "evals": ["core"],
        "preset": "smoke",
    }
    path = tmp / "sweep.json"
    path.write_text(json.dumps(spec))
    return path


def _dirs(out: Path, cache: Path) -> list[str]:
    return ["--results-dir", str(out / "results"), "--runs-dir", str(out / "runs"),
            "--reports-dir", str(out / "reports"), "--cache-dir", str(cache)]  # fmt: skip


def _results(out: Path) -> dict[str, dict]:
    root = out / "results"
    return {str(r.path.relative_to(root)): r.data["eval_result_metrics"] for r in iter_results(root)}


def _script_command(path: Path) -> list[str]:
    return shlex.split(path.read_text().strip().splitlines()[-1])


@pytest.fixture
def counted(monkeypatch):
    """Counts training passes (train_jobs calls with their SAEs) and cache builds, per stage."""
    calls = {"train": [], "build": 0}
    real_train, real_build = workflow.train_jobs, activation_cache.ActivationCache._build

    def train(jobs, *args, **kwargs):
        calls["train"].append(sorted(job.sae_id for job in jobs if not job.is_finished()))
        return real_train(jobs, *args, **kwargs)

    def build(*args, **kwargs):
        calls["build"] += 1
        return real_build(*args, **kwargs)

    monkeypatch.setattr(workflow, "train_jobs", train)
    monkeypatch.setattr(activation_cache.ActivationCache, "_build", staticmethod(build))
    return calls


def test_emitted_scripts_run_the_stages_and_equal_the_local_executor(
    tmp_path, tiny_model_dir, tiny_registered, counted, capsys
):
    spec = _spec(tmp_path, tiny_model_dir)
    sweep.main([str(spec), "--groups"])
    assert capsys.readouterr().out.splitlines() == [f"0\t{TINY.key}/layer_0\t2 SAEs", f"1\t{TINY.key}/layer_1\t2 SAEs"]
    slurm_out, cache = tmp_path / "slurm-run", tmp_path / "shared-cache"
    sweep.main([str(spec), "--emit", "slurm", str(tmp_path / "scripts"), "--slurm-option", "partition=gpu", "-q",
                *_dirs(slurm_out, cache)])  # fmt: skip
    scripts = tmp_path / "scripts"
    for stage in STAGES:
        text = (scripts / f"{stage}.sbatch").read_text()
        assert "#SBATCH --array=0-1" in text and "#SBATCH --partition=gpu" in text
        assert "--gres" not in text  # a CPU sweep asks for no GPU
        subprocess.run(["bash", "-n", str(scripts / f"{stage}.sbatch")], check=True)
        command = _script_command(scripts / f"{stage}.sbatch")
        assert command[1:3] == ["-m", "abstopk_eval.sweep"] and command[command.index("--stage") + 1] == stage
    # each array task, as SLURM would run it: stage by stage, group by group
    for stage in STAGES:
        command = _script_command(scripts / f"{stage}.sbatch")
        before = (len(counted["train"]), counted["build"])
        for task in range(2):
            sweep.main([part.replace("$SLURM_ARRAY_TASK_ID", str(task)) for part in command[3:]])
        if stage == "cache":
            assert counted["build"] - before[1] == 4  # training + held-out cache of each (model, layer)
        if stage == "train":  # one pass per (model, layer) trains both of its SAEs; no cache is built again
            assert counted["train"][before[0] :] == [["abstopk_k4_s0_smoke", "topk_k4_s0_smoke"]] * 2
            assert counted["build"] == before[1]
        if stage == "evaluate":
            assert counted["build"] == before[1] and len(counted["train"]) == before[0]
    local = tmp_path / "local"
    sweep.main([str(spec), "-q", *_dirs(local, tmp_path / "local-cache")])
    assert len(_results(local)) == 4 and _results(local) == _results(slurm_out)


def test_submit_chains_the_stages_with_afterok(tmp_path, tiny_model_dir, tiny_registered):
    spec = _spec(tmp_path, tiny_model_dir)
    sweep.main([str(spec), "--emit", "slurm", str(tmp_path / "scripts"), "-q", *_dirs(tmp_path, tmp_path / "c")])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records its arguments and answers like `sbatch --parsable` on a named cluster
    fake.write_text('#!/bin/bash\nn=$(( $(wc -l < "$SBATCH_LOG" 2>/dev/null || echo 0) + 100 ))\n'
                    'echo "$*" >> "$SBATCH_LOG"\necho "$n;cluster"\n')  # fmt: skip
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "sbatch.log")}
    out = subprocess.run(["bash", str(tmp_path / "scripts" / "submit.sh")], env=env, check=True, capture_output=True)
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert calls == [
        "--parsable cache.sbatch",
        "--parsable --dependency=afterok:100 train.sbatch",
        "--parsable --dependency=afterok:101 evaluate.sbatch",
        "--parsable --dependency=afterok:102 report.sbatch",
    ]
    assert b"submitted" in out.stdout


def test_a_gpu_sweep_asks_for_a_gpu_per_array_task(tmp_path, tiny_model_dir, tiny_registered, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    spec = json.loads(_spec(tmp_path, tiny_model_dir).read_text())
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({**spec, "device": "cuda"}))
    sweep.main([str(path), "--emit", "slurm", str(tmp_path / "s"), "-q"])
    assert "#SBATCH --gres=gpu:1" in (tmp_path / "s" / "train.sbatch").read_text()
    assert "--gres" not in (tmp_path / "s" / "report.sbatch").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stage", "train"], "--stage needs --group between 0 and 1"),
        (["--stage", "train", "--group", "2"], "--stage needs --group"),
        (["--stage", "evaluate", "--group", "0"], "not trained yet (run the train stage first)"),
        (["--emit", "pbs", "x"], "only slurm"),
    ],
)
def test_stage_misuse_is_one_line_error(extra, message, tmp_path, tiny_model_dir, tiny_registered, capsys):
    spec = _spec(tmp_path, tiny_model_dir)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(spec), "-q", *_dirs(tmp_path, tmp_path / "c"), *extra])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err


def test_sweep_dry_run_prints_one_plan_per_group(tmp_path, tiny_model_dir, tiny_registered, capsys):
    sweep.main([str(_spec(tmp_path, tiny_model_dir)), "--dry-run"])
    out = capsys.readouterr().out
    assert len(re.findall(r"^dry run: tiny-test layer \d", out, flags=re.M)) == 2
    assert "SAEs to train (2): topk_k4_s0_smoke, abstopk_k4_s0_smoke" in out
    gpu = tmp_path / "gpu.json"  # planning a GPU sweep from here: noted, not refused
    gpu.write_text(json.dumps({**json.loads(_spec(tmp_path, tiny_model_dir).read_text()), "device": "cuda"}))
    sweep.main([str(gpu), "--dry-run"])
    out = capsys.readouterr().out
    assert "computes in bfloat16, TF32 matmuls" in out and "note: not available here: device cuda" in out
