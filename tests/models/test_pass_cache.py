"""The on-disk model-pass cache: built once, reused, checksummed (a corrupt file is rebuilt), keyed by identity,
built once by two racing processes, and the resume check remembered across adapters."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.batching import pad_sequences
from abstopk_eval.models.pass_cache import PassCache, pass_identity
from tests.helpers.models import tiny_llama
from tests.helpers.processes import fork_call, wait


def _cache(root: Path, weights: str = "local:abc") -> PassCache:
    return PassCache(root, pass_identity({"key": "tiny", "weights": weights, "dtype": "float32"}, "cpu"))


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(5, 3, generator=g), "n": torch.arange(4), "h": torch.randn(2, generator=g).bfloat16()}


def test_an_entry_is_built_once_and_read_back_equal(tmp_path):
    cache = _cache(tmp_path)
    calls: list[int] = []

    def build():
        calls.append(1)
        return _tensors()

    first = cache.get_or_build("kind", 3, {"ids": "x"}, build)
    again = _cache(tmp_path).get_or_build("kind", 3, {"ids": "x"}, build)  # a new process's cache object
    assert len(calls) == 1
    for name, t in _tensors().items():
        assert torch.equal(first[name], t) and torch.equal(again[name], t) and again[name].dtype == t.dtype
    assert (cache.folder / "identity.json").exists()
    path = cache.path("kind", 3, {"ids": "x"})
    assert path.parent == cache.folder / "layer_3" / "kind" and path.suffix == ".safetensors"
    # another key, layer or model identity is another entry
    cache.get_or_build("kind", 3, {"ids": "y"}, build)
    cache.get_or_build("kind", 4, {"ids": "x"}, build)
    _cache(tmp_path, weights="local:other").get_or_build("kind", 3, {"ids": "x"}, build)
    assert len(calls) == 4


def test_a_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    cache = _cache(tmp_path)
    key = {"ids": "x"}
    cache.get_or_build("kind", 1, key, _tensors)
    path = cache.path("kind", 1, key)
    data = bytearray(path.read_bytes())
    for damage in ("truncate", "flip"):
        if damage == "truncate":
            path.write_bytes(bytes(data[: len(data) // 2]))
        else:
            altered = bytearray(data)
            altered[-3] ^= 0xFF  # a tensor byte: the file still parses, its checksum no longer matches
            path.write_bytes(bytes(altered))
        calls: list[int] = []
        with caplog.at_level(logging.WARNING, logger="abstopk_eval.pass_cache"):
            got = _cache(tmp_path).get_or_build("kind", 1, key, lambda calls=calls: calls.append(1) or _tensors())
        assert calls == [1], damage
        assert "is corrupt" in caplog.text and "rebuilding" in caplog.text
        assert torch.equal(got["a"], _tensors()["a"])
        reread = _cache(tmp_path)
        assert torch.equal(
            reread.get_or_build("kind", 1, key, lambda calls=calls: calls.append(1) or {})["a"], _tensors()["a"]
        )
        assert calls == [1] and reread.hits == 1  # the rebuilt file is intact
        caplog.clear()


def _slow_build(root: Path, marker: Path) -> None:
    def build():
        with open(marker, "a") as fh:
            fh.write("built\n")
        time.sleep(0.5)
        return _tensors()

    got = _cache(root).get_or_build("kind", 0, {"ids": "race"}, build)
    assert torch.equal(got["a"], _tensors()["a"])


def test_two_processes_build_an_entry_once(tmp_path):
    marker = tmp_path / "builds.txt"
    pids = [fork_call(_slow_build, tmp_path / "cache", marker) for _ in range(2)]
    assert [wait(pid) for pid in pids] == [0, 0]
    assert marker.read_text().count("built") == 1


def test_the_resume_check_is_remembered_by_the_cache(tmp_path):
    model, tok = tiny_llama(seed=0)
    seqs = [[1, 10, 11, 12], [1, 20, 21]]
    ids, mask = pad_sequences(seqs, 0, side="left")
    first = ModelAdapter(model, tok)
    first.pass_cache = _cache(tmp_path)
    resid = first.activations(ids, 1, attention_mask=mask)
    first.logits_from_residual(resid, 1, ids, mask)
    assert first.pass_cache.resume_record(1) is True
    second = ModelAdapter(model, tok)
    second.pass_cache = _cache(tmp_path)
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, b in enumerate(second.layers())]
    try:
        second.logits_from_residual(resid, 1, ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert ran == [2]  # no checking full pass: only the block after layer 1 ran
