"""Shared cache directories: two processes racing on one model copy or activation cache build it once and read the
same content; the lock of a killed builder is free again."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from abstopk_eval import locks
from abstopk_eval.data.activation_cache import ActivationCache, CacheKey
from abstopk_eval.data.corpus import CorpusInfo, PackedTokens
from abstopk_eval.errors import UserError
from abstopk_eval.models import loading
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.models.sequence_start import SequenceStart
from tests.helpers.models import save_tiny_model, tiny_gguf_spec, tiny_llama
from tests.helpers.processes import barrier, fork_call, killed_at, wait

SEQ_LEN, D = 6, 4
KEY = CacheKey(model="fake", layer=0, corpus="toy", n_tokens=8 * SEQ_LEN, seq_len=SEQ_LEN)


class SlowAdapter:
    """Activations that are a fixed function of the token ids; each call sleeps (a race window) and logs the pid."""

    bos_token_id = 1
    sequence_start = SequenceStart("bos", 1, frozenset(), 1, None, None)
    d_model = D

    def __init__(self, log: Path) -> None:
        self.log = log

    def activations(self, ids: torch.Tensor, layer: int) -> torch.Tensor:
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.1)
        return torch.stack([ids.float() * (i + 1) for i in range(D)], dim=-1)


def _packed() -> PackedTokens:
    tokens = torch.arange(8 * SEQ_LEN).reshape(8, SEQ_LEN) % 17 + 2
    tokens[:, 0] = 1
    return PackedTokens(tokens, CorpusInfo("toy", "test", "none", "numbers", 8), "train", 8)


def _build_cache(root: Path, tmp: Path, name: str) -> None:
    barrier(tmp / "start", "cache", 2)
    cache = ActivationCache.build_or_load(root, KEY, SlowAdapter(tmp / "calls.log"), _packed(), batch_size=2)
    (tmp / f"{name}.json").write_text(json.dumps({"sha256": cache.meta["sha256"], "rows": cache.n_rows}))


def _race(tmp: Path, fn, *args) -> list[dict]:
    pids = [fork_call(fn, *args, tmp, name) for name in ("a", "b")]
    assert [wait(pid, 60) for pid in pids] == [0, 0]
    return [json.loads((tmp / f"{name}.json").read_text()) for name in ("a", "b")]


def test_two_processes_build_one_activation_cache_once(tmp_path):
    root = tmp_path / "activations"
    a, b = _race(tmp_path, _build_cache, root)
    calls = (tmp_path / "calls.log").read_text().split()
    assert len(calls) == 4 and len(set(calls)) == 1  # 8 sequences in batches of 2, all by one of the two processes
    assert a == b
    cache = ActivationCache.load(root / KEY.dirname)
    assert cache.meta["sha256"] == a["sha256"]
    np.testing.assert_array_equal(cache.activations[:, 0], _packed().tokens[:, 1:].flatten().numpy())
    assert sorted(p.name for p in (root / KEY.dirname).parent.iterdir()) == [
        f".{Path(KEY.dirname).name}.lock",
        Path(KEY.dirname).name,
    ]


GGUF_SPEC = tiny_gguf_spec("tiny-gguf")


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """GGUF_SPEC registered with a fake dequantisation (saves the tiny Llama, slowly, logging its pid)."""
    model, tok = tiny_llama()
    monkeypatch.setitem(MODEL_REGISTRY, GGUF_SPEC.key, GGUF_SPEC)
    monkeypatch.setattr(loading, "_package_version", lambda spec: "1.0")

    def dequantise(spec, work, out):
        with open(tmp_path / "builds.log", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        save_tiny_model(model, tok, out)
        return {"gguf_file": "tiny-Q4_K_M.gguf", "gguf_sha256": "0" * 64}

    monkeypatch.setattr(loading, "_dequantise_into", dequantise)
    return tmp_path / "cache"


def _load_copy(cache_dir: Path, tmp: Path, name: str) -> None:
    barrier(tmp / "start", "model", 2)
    loading.load_model(GGUF_SPEC.key, cache_dir=cache_dir)
    manifest = loading.verify_cached_copy(cache_dir / "models" / GGUF_SPEC.key)
    (tmp / f"{name}.json").write_text(json.dumps(manifest["files"]))


def test_two_processes_build_one_model_copy_once(fake_gguf, tmp_path):
    a, b = _race(tmp_path, _load_copy, fake_gguf)
    assert len((tmp_path / "builds.log").read_text().split()) == 1
    assert a == b and "model.safetensors" in a


def test_a_killed_model_copy_build_is_never_taken_as_valid(fake_gguf, tmp_path):
    killed_at("model-copy", loading.load_model, GGUF_SPEC.key, cache_dir=fake_gguf)
    models = fake_gguf / "models"
    assert not (models / GGUF_SPEC.key).exists()  # only the staging folder was left behind
    assert any(p.name.startswith(f".{GGUF_SPEC.key}.build-") for p in models.iterdir())
    loading.load_model(GGUF_SPEC.key, cache_dir=fake_gguf)  # the lock is free again: no waiting
    loading.verify_cached_copy(models / GGUF_SPEC.key)
    assert len((tmp_path / "builds.log").read_text().split()) == 2
    assert not any(".build-" in p.name for p in models.iterdir())  # the dead build's leftovers were removed


def test_a_killed_cache_build_leaves_nothing_valid_and_the_rerun_builds_it(tmp_path):
    root = tmp_path / "activations"
    killed_at("cache-build:2", ActivationCache.build_or_load, root, KEY, SlowAdapter(tmp_path / "k.log"), _packed(), 2)
    assert not (root / KEY.dirname).exists()
    cache = ActivationCache.build_or_load(root, KEY, SlowAdapter(tmp_path / "r.log"), _packed(), batch_size=2)
    clean = ActivationCache.build_or_load(tmp_path / "clean", KEY, SlowAdapter(tmp_path / "c.log"), _packed(), 2)
    assert cache.meta["sha256"] == clean.meta["sha256"]
    assert [p.name for p in (root / KEY.dirname).parent.iterdir() if ".tmp-" in p.name] == []


def test_a_waiter_gives_up_with_one_line_after_the_timeout(tmp_path):
    target = tmp_path / "thing"
    with locks.exclusive(target, "the thing"):
        pid = fork_call(_wait_for, target)
        assert wait(pid, 30) == 3


def _wait_for(target: Path) -> None:
    try:
        with locks.exclusive(target, "the thing", timeout_s=0.3):
            pass
    except UserError as err:
        assert "waiting for process" in str(err) and "\n" not in str(err)
        raise SystemExit(3) from None


def test_a_read_only_cache_is_used_without_a_lock(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    entered = []
    with locks.exclusive(tmp_path / "shared", "a shared cache"):
        entered.append(True)
    assert entered == [True]
