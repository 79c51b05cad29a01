"""Activation caches stored in 16 bits, and reuse without re-hashing an unchanged cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abstopk_eval import io
from abstopk_eval.data.activation_cache import ActivationCache, CacheKey
from abstopk_eval.data.corpus import build_token_sequences
from abstopk_eval.errors import UserError
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.models import tiny_llama

SEQ_LEN, LAYER = 16, 1


@pytest.fixture(scope="module")
def adapter_and_tokens():
    adapter = ModelAdapter(*tiny_llama())
    return adapter, build_token_sequences("wiki-en", adapter.tokenizer, SEQ_LEN, "train", 20 * SEQ_LEN)


def _key(packed, dtype):
    return CacheKey("tiny", LAYER, "wiki-en", packed.n_tokens, SEQ_LEN, source=dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_cache_stores_rounded_rows_in_half_the_bytes(adapter_and_tokens, tmp_path, dtype):
    adapter, packed = adapter_and_tokens
    full = ActivationCache.build_or_load(tmp_path, _key(packed, "float32"), adapter, packed)
    half = ActivationCache.build_or_load(tmp_path, _key(packed, dtype), adapter, packed, dtype=dtype)
    assert half.activations.nbytes * 2 == full.activations.nbytes and half.dtype == dtype
    exact = full.rows(slice(None))
    torch.testing.assert_close(half.rows(slice(None)), exact.to(getattr(torch, dtype)).float(), rtol=0, atol=0)
    batch = next(half.iter_batches(8, n_tokens=8, seed=0))
    assert batch.dtype == torch.float32
    torch.testing.assert_close(half.mean, exact.mean(0), atol=0.02, rtol=0.02)
    reopened = ActivationCache.load(half.directory)  # verified from disk
    assert torch.equal(reopened.rows(slice(0, 5)), half.rows(slice(0, 5)))


def test_reuse_does_not_rehash_an_unchanged_cache_but_a_changed_one(adapter_and_tokens, tmp_path, monkeypatch):
    adapter, packed = adapter_and_tokens
    key, digests = _key(packed, "float32"), tmp_path / "digests"
    digests.mkdir()
    cache = ActivationCache.build_or_load(tmp_path, key, adapter, packed, digest_dir=digests)
    hashed = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    ActivationCache.build_or_load(tmp_path, key, adapter, packed, digest_dir=digests)
    assert hashed == []  # the build recorded its digest
    path = cache.directory / cache.meta["file"]
    data = np.fromfile(path, dtype=np.uint8)
    data[7] ^= 1
    data.tofile(path)  # a rewrite: new mtime, so the digest is computed again and the flip is found
    with pytest.raises(UserError, match="corrupt"):
        ActivationCache.build_or_load(tmp_path, key, adapter, packed, digest_dir=digests)
    assert len(hashed) == 1
