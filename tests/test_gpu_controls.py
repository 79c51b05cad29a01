"""GPU controls, tested on CPU: flag parsing, what enters the run identity, and the CUDA-only placement logic with
CUDA faked."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from abstopk_eval import run, runtime, workflow
from abstopk_eval.training import placement
from tests.helpers.models import TINY


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch reports two CUDA devices (only the checks and decisions are exercised, nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def _plan(tiny_model_dir, tmp_path, *extra):
    args = run.build_parser().parse_args(
        ["--model", TINY.key, "--model-path", str(tiny_model_dir), "--preset", "smoke", "--no-report",
         "--cache-dir", str(tmp_path / "cache"), *extra]
    )  # fmt: skip
    return run.plan_from_args(args)


def _hash(plan) -> str:
    return workflow.train_identity(plan, workflow.RunIdentities.of(plan), "topk", 4, 0).hash


def test_llm_dtype_defaults_to_bf16_on_cuda_and_fp32_on_cpu(tiny_model_dir, tiny_registered, tmp_path, fake_cuda):
    cpu = _plan(tiny_model_dir, tmp_path)
    gpu = _plan(tiny_model_dir, tmp_path, "--device", "cuda:1")
    assert (cpu.llm_dtype, cpu.tf32) == ("float32", False)
    assert (gpu.llm_dtype, gpu.tf32, gpu.device) == ("bfloat16", True, "cuda:1")
    exact = _plan(tiny_model_dir, tmp_path, "--device", "cuda", "--llm-dtype", "float32", "--no-tf32")
    assert (exact.llm_dtype, exact.tf32) == ("float32", False)


def test_what_changes_results_changes_the_identity(tiny_model_dir, tiny_registered, tmp_path, fake_cuda):
    base = _hash(_plan(tiny_model_dir, tmp_path))
    changed = {
        flags: _hash(_plan(tiny_model_dir, tmp_path, *flags))
        for flags in (
            ("--llm-dtype", "bfloat16"),
            ("--device", "cuda", "--llm-dtype", "float32"),  # TF32 on
            ("--cache-dtype", "float16"),
            ("--sae-batch-size", "32"),
            ("--stream",),
        )
    }
    assert base not in changed.values() and len(set(changed.values())) == len(changed)
    # how the work is batched changes no result; nor does the device itself when the numerics are the same
    assert _hash(_plan(tiny_model_dir, tmp_path, "--llm-batch-size", "2")) == base
    assert _hash(_plan(tiny_model_dir, tmp_path, "--device", "cuda", "--llm-dtype", "float32", "--no-tf32")) == base


def test_cache_source_changes_with_llm_and_storage_dtype(tiny_model_dir, tiny_registered, tmp_path):
    plan = _plan(tiny_model_dir, tmp_path)
    ids = workflow.RunIdentities.of(plan)
    bf16 = workflow.RunIdentities.of(_plan(tiny_model_dir, tmp_path, "--llm-dtype", "bfloat16"))
    assert len({ids.cache_source(), ids.cache_source("bfloat16"), bf16.cache_source()}) == 3


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--llm-batch-size", "0"], "--llm-batch-size must be at least 1"),
        (["--sae-batch-size", "0"], "--sae-batch-size must be at least 1"),
        (["--epochs", "2"], "--epochs applies to streamed activations"),
        (["--stream", "--epochs", "0"], "--epochs must be at least 1"),
        (["--device", "cuda:0"], "no CUDA GPU is available here"),
    ],
)
def test_bad_gpu_flags_are_one_line_errors(flags, message, tiny_model_dir, tiny_registered, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--model", TINY.key, "--model-path", str(tiny_model_dir), "--no-report", *flags])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err


def test_session_selects_the_device_and_tf32_on_cuda_only(tiny_model_dir, tiny_registered, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("device", str(device))))
    monkeypatch.setattr(runtime, "apply_matmul_precision", lambda enabled: calls.append(("tf32", enabled)))
    plan = _plan(tiny_model_dir, tmp_path)
    workflow.Session(plan)
    assert calls == []
    workflow.Session(dataclasses.replace(plan, device="cuda:1", tf32=True))
    assert calls == [("device", "cuda:1"), ("tf32", True)]


def test_matmul_precision_switches_tf32():
    before = torch.get_float32_matmul_precision()
    try:
        runtime.apply_matmul_precision(True)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
        runtime.apply_matmul_precision(False)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)


def test_prefetch_passes_through_off_cuda():
    batches = [torch.full((2, 3), float(i)) for i in range(4)]
    out = list(placement.prefetch(iter(batches), "cpu"))
    assert all(a is b for a, b in zip(out, batches, strict=True))


@pytest.fixture
def cuda_path(monkeypatch):
    """The CUDA branch of placement, with pinning and copies standing in on the CPU."""
    monkeypatch.setattr(runtime, "on_cuda", lambda device: True)
    monkeypatch.setattr(placement, "_pin", lambda batch: batch.clone())


def test_prefetch_on_cuda_gives_the_same_batches_in_order(cuda_path):
    batches = [torch.full((2, 3), float(i)) for i in range(6)]
    out = list(placement.prefetch(iter(batches), "cpu", depth=2))
    assert len(out) == 6 and all(torch.equal(a, b) for a, b in zip(out, batches, strict=True))
    assert all(a is not b for a, b in zip(out, batches, strict=True))  # went through the pinning thread


def test_prefetch_on_cuda_raises_the_readers_error_and_stops_when_abandoned(cuda_path):
    def failing():
        yield torch.zeros(1)
        raise ValueError("bad cache read")

    with pytest.raises(ValueError, match="bad cache read"):
        list(placement.prefetch(failing(), "cpu"))
    consumed = []

    def endless():
        i = 0
        while True:
            consumed.append(i)
            yield torch.tensor([i])
            i += 1

    stream = placement.prefetch(endless(), "cpu", depth=2)
    assert int(next(stream)) == 0
    stream.close()  # the trainer stops early: the reader thread must end, not keep reading or block forever
    n = len(consumed)
    time.sleep(0.3)
    assert n <= 5 and len(consumed) == n
    assert not any(t.name == "abstopk-prefetch" and t.is_alive() for t in threading.enumerate())


class _Model:
    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(device)
        return self


def test_model_waits_on_the_cpu_while_saes_train_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    model = _Model()
    with placement.offloaded(model, "cpu"):
        pass
    assert model.moves == []  # nothing to free off CUDA
    monkeypatch.setattr(runtime, "on_cuda", lambda device: True)
    with pytest.raises(RuntimeError), placement.offloaded(model, "cuda:1"):
        assert model.moves == ["cpu"]
        raise RuntimeError("training failed")
    assert model.moves == ["cpu", "cuda:1"]  # back on the GPU for the evaluations, even after a failure


def test_streamed_training_keeps_the_model_on_the_gpu(tiny_model_dir, tiny_registered, tmp_path, monkeypatch):
    """A cached run moves the loaded model off the GPU for training; a streamed run (which needs it) does not."""
    offered = []
    real = placement.offloaded

    def spy(model, device):
        offered.append(model)
        return real(model, device)

    monkeypatch.setattr(placement, "offloaded", spy)
    common = ["--variants", "topk", "--evals", "core", "-q", "--results-dir", str(tmp_path / "r"),
              "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "rep")]  # fmt: skip
    run.main(["--model", TINY.key, "--model-path", str(tiny_model_dir), "--preset", "smoke", "--no-report",
              "--cache-dir", str(tmp_path / "cache"), *common])  # fmt: skip
    run.main(["--model", TINY.key, "--model-path", str(tiny_model_dir), "--preset", "smoke", "--no-report",
              "--cache-dir", str(tmp_path / "cache"), "--stream", *common])  # fmt: skip
    assert offered[0] is not None and offered[1] is None
