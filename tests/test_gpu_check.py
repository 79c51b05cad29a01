"""benchmarks/gpu_check.py stays runnable: its kernel check passes on CPU at small shapes, and without CUDA the
GPU run is refused with one error line (so no GPU result is ever written from a CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_kernel_check_runs_and_passes_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--parts", "kernels", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["kernels"]["pass"] and set(report["kernels"]) >= {"topk", "abstopk", "batchtopk", "batch-abstopk"}
    assert report["device"] == "cpu" and report["small"]


def test_without_cuda_the_gpu_run_is_refused(tmp_path):
    if torch.cuda.is_available():
        return
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True, text=True
    )
    assert (
        done.returncode == 2 and done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "x.json").exists()
