"""Activation cache: build, reuse, validation, normalisation statistics and batch iteration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from abstopk_eval.data.activation_cache import ActivationCache, CacheKey
from abstopk_eval.data.corpus import CorpusInfo, PackedTokens
from abstopk_eval.errors import UserError
from abstopk_eval.locks import lock_path
from abstopk_eval.models.sequence_start import SequenceStart

VOCAB, D, SEQ_LEN, N_SEQ, BOS = 50, 12, 9, 10, 2


class FakeAdapter:
    """Deterministic random linear map of a token embedding (plus a position term); counts calls."""

    bos_token_id = BOS
    sequence_start = SequenceStart("bos_eq_eos", BOS, frozenset({BOS}), BOS, BOS, None)
    d_model = D

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(VOCAB, 8, generator=g)
        self.proj = torch.randn(8, D, generator=g)
        self.bias = torch.linspace(-3.0, 5.0, D)
        self.calls = 0

    def activations(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        self.calls += 1
        pos = torch.arange(input_ids.shape[1], dtype=torch.float32)[None, :, None]
        return self.embed[input_ids] @ self.proj * (1 + layer) + self.bias + 0.1 * pos


def _packed(n_seq: int = N_SEQ, seed: int = 1) -> PackedTokens:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (n_seq, SEQ_LEN), generator=g)
    tokens[:, 0] = BOS
    info = CorpusInfo("toy", "test", "none", "random tokens", n_seq)
    return PackedTokens(tokens=tokens, info=info, split="train", n_documents_used=n_seq)


KEY = CacheKey(model="fake-lm", layer=1, corpus="toy", n_tokens=N_SEQ * SEQ_LEN, seq_len=SEQ_LEN)


def _expected_rows(adapter: FakeAdapter, packed: PackedTokens) -> np.ndarray:
    acts = adapter.activations(packed.tokens, KEY.layer)
    return acts[packed.tokens != BOS].numpy()


@pytest.fixture()
def built(tmp_path: Path) -> tuple[ActivationCache, FakeAdapter, PackedTokens, Path]:
    adapter, packed = FakeAdapter(), _packed()
    cache = ActivationCache.build_or_load(tmp_path, KEY, adapter, packed, batch_size=3)
    return cache, adapter, packed, tmp_path


def test_key_dirname():
    key = CacheKey("gemma-3-270m", 9, "wiki-en", 500000, 128)
    assert key.dirname == "gemma-3-270m/layer_9/wiki-en_T500000_L128"
    assert CacheKey("gemma-3-270m", 9, "wiki-en", 500000, 128, split="eval").dirname.endswith(
        "wiki-en-eval_T500000_L128"
    )


def test_build_writes_rows_without_bos(built):
    cache, adapter, packed, root = built
    assert adapter.calls == math.ceil(N_SEQ / 3)
    assert cache.n_rows == N_SEQ * (SEQ_LEN - 1) and cache.d_in == D
    assert cache.directory == root / KEY.dirname
    assert sorted(p.name for p in cache.directory.iterdir()) == ["activations.f32", "meta.json"]
    leftovers = [p for p in cache.directory.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [lock_path(cache.directory)]  # no temp dir left; the lock file stays
    np.testing.assert_allclose(np.asarray(cache.activations), _expected_rows(FakeAdapter(), packed), rtol=1e-6)
    assert not cache.activations.flags.writeable
    meta = json.loads((cache.directory / "meta.json").read_text())
    assert meta["shape"] == [cache.n_rows, D] and meta["dtype"] == "float32"
    assert meta["key"]["model"] == "fake-lm" and meta["corpus"]["corpus"] == "toy"
    assert len(meta["sha256"]) == 64 and "torch" in meta["versions"] and "transformers" in meta["versions"]
    prov = cache.provenance()
    assert prov["sha256"] == meta["sha256"] and prov["corpus"]["n_sequences"] == N_SEQ


def test_other_bos_positions_are_excluded(tmp_path):
    packed = _packed()
    packed.tokens[3, 4] = BOS
    packed.tokens[7, 8] = BOS
    cache = ActivationCache.build_or_load(tmp_path, KEY, FakeAdapter(), packed)
    assert cache.n_rows == N_SEQ * (SEQ_LEN - 1) - 2


def test_mean_and_scale_match_numpy(built):
    cache, _, packed, _ = built
    x = _expected_rows(FakeAdapter(), packed).astype(np.float64)
    mean = x.mean(axis=0)
    scale = math.sqrt(((x - mean) ** 2).sum(axis=1).mean() / D)
    np.testing.assert_allclose(cache.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    assert cache.scale == pytest.approx(scale, rel=1e-9)


def test_second_call_reuses_without_running_the_model(built, caplog):
    cache, _, packed, root = built
    again = FakeAdapter()
    with caplog.at_level("INFO", logger="abstopk_eval.data"):
        reused = ActivationCache.build_or_load(root, KEY, again, packed, batch_size=3)
    assert again.calls == 0
    assert any("reusing activation cache" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(reused.activations), np.asarray(cache.activations))


def test_interrupted_build_leaves_no_cache(tmp_path):
    class Crashing(FakeAdapter):
        def activations(self, input_ids, layer):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().activations(input_ids, layer)

    packed = _packed()
    with pytest.raises(KeyboardInterrupt):
        ActivationCache.build_or_load(tmp_path, KEY, Crashing(), packed, batch_size=3)
    final = tmp_path / KEY.dirname
    assert not final.exists() and list(final.parent.iterdir()) == [lock_path(final)]
    stale = final.parent / f".{final.name}.tmp-999999999-deadbeef"  # a crashed process's leftover
    stale.mkdir()
    (stale / "activations.f32").write_bytes(b"\0" * 16)
    adapter = FakeAdapter()
    cache = ActivationCache.build_or_load(tmp_path, KEY, adapter, packed, batch_size=3)
    assert adapter.calls == 4 and cache.n_rows == N_SEQ * (SEQ_LEN - 1) and not stale.exists()


def _corrupt(path: Path, how: str) -> None:
    act, meta = path / "activations.f32", path / "meta.json"
    if how == "truncated":
        act.write_bytes(act.read_bytes()[:-4])
    elif how == "bitflip":
        data = bytearray(act.read_bytes())
        data[len(data) // 2] ^= 0x01
        act.write_bytes(bytes(data))
    elif how == "bad_json":
        meta.write_text("{not json")
    elif how == "missing_field":
        m = json.loads(meta.read_text())
        del m["sha256"]
        meta.write_text(json.dumps(m))
    elif how == "no_meta":
        meta.unlink()


@pytest.mark.parametrize("how", ["truncated", "bitflip", "bad_json", "missing_field", "no_meta"])
def test_corrupt_cache_is_a_user_error(built, how):
    cache, _, packed, root = built
    _corrupt(cache.directory, how)
    adapter = FakeAdapter()
    with pytest.raises(
        UserError, match=r"activation cache at .* is corrupt \(.*\); delete it and rerun to rebuild"
    ) as err:
        ActivationCache.build_or_load(root, KEY, adapter, packed)
    assert "\n" not in str(err.value) and adapter.calls == 0


def test_d_model_mismatch_is_refused(built):
    _, _, packed, root = built
    with pytest.raises(UserError, match="d_model=12 but the model/SAE expects 7"):
        ActivationCache.build_or_load(root, KEY, FakeAdapter(), packed, d_in=7)


def test_different_tokens_are_refused(built):
    _, _, _, root = built
    with pytest.raises(UserError, match="different tokens"):
        ActivationCache.build_or_load(root, KEY, FakeAdapter(), _packed(seed=5))


def _collect(cache: ActivationCache, **kw) -> list[torch.Tensor]:
    return list(cache.iter_batches(**kw))


def test_iter_batches_epochs_and_determinism(built):
    cache, *_ = built
    n = cache.n_rows  # 80
    batches = _collect(cache, batch_size=16, n_tokens=n, seed=3, normalise=False)
    assert len(batches) == n // 16 and all(b.shape == (16, D) and b.dtype == torch.float32 for b in batches)
    rows = torch.cat(batches).numpy()
    raw = np.asarray(cache.activations)
    # one epoch = every row exactly once
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(raw, axis=0))
    again = _collect(cache, batch_size=16, n_tokens=n, seed=3, normalise=False)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = _collect(cache, batch_size=16, n_tokens=n, seed=4, normalise=False)
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))
    # several epochs, last batch complete: ceil(n_tokens / batch_size) batches
    many = _collect(cache, batch_size=24, n_tokens=3 * n + 5, seed=3, normalise=False)
    assert len(many) == math.ceil((3 * n + 5) / 24) and all(b.shape == (24, D) for b in many)


def test_iter_batches_resume_equals_tail(built):
    cache, *_ = built
    kw = dict(batch_size=24, n_tokens=250, seed=11)
    full = _collect(cache, **kw)
    for start_batch in (0, 1, 4, len(full) - 1, len(full)):
        tail = _collect(cache, start_token=start_batch * 24, **kw)
        assert len(tail) == len(full) - start_batch
        assert all(torch.equal(a, b) for a, b in zip(full[start_batch:], tail))
    with pytest.raises(UserError):
        next(cache.iter_batches(24, n_tokens=250, seed=11, start_token=5))


def test_iter_batches_rows_reads_only_that_share(built, monkeypatch):
    """A data-parallel rank's share (`rows=`) is its slice of the global batch, and only its rows are read."""
    cache, *_ = built
    kw = dict(batch_size=24, n_tokens=250, seed=11)
    full = _collect(cache, **kw)
    raw = np.asarray(cache.activations)
    read: list[np.ndarray] = []

    class Recording:
        def __getitem__(self, idx):
            read.append(np.asarray(idx))
            return raw[idx]

    monkeypatch.setattr(cache, "_source", lambda _limit: Recording())
    for bounds in ((0, 12), (12, 24)):
        read.clear()
        share = _collect(cache, rows=bounds, **kw)
        assert all(torch.equal(a, b[bounds[0] : bounds[1]]) for a, b in zip(share, full))
        assert all(len(idx) == 12 for idx in read) and len(read) == len(full)


def test_memmap_path_equals_ram_path(built):
    cache, _, packed, root = built
    fresh = ActivationCache.load(root / KEY.dirname)
    kw = dict(batch_size=16, n_tokens=200, seed=2)
    ram = _collect(cache, **kw)
    mm = _collect(fresh, ram_limit_bytes=0, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ram, mm))


def test_normalised_batches_have_zero_mean_unit_scale(built):
    cache, *_ = built
    x = torch.cat(_collect(cache, batch_size=20, n_tokens=cache.n_rows, seed=0)).double()
    assert x.mean(0).abs().max() < 1e-5
    assert (x.pow(2).sum(1).mean() / D).sqrt().item() == pytest.approx(1.0, rel=1e-5)
