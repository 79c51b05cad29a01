"""Streamed activations: every trainable position once per epoch, deterministic, resumable without rerunning
the model before the resume point."""

from __future__ import annotations

import pytest
import torch

from abstopk_eval.data.activation_cache import ActivationCache, CacheKey, trainable_positions
from abstopk_eval.data.activation_stream import ActivationStream, unique_sequences
from abstopk_eval.data.corpus import build_token_sequences
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.models import tiny_llama

SEQ_LEN, LAYER = 16, 1


@pytest.fixture(scope="module")
def adapter() -> ModelAdapter:
    return ModelAdapter(*tiny_llama())


def _packed(adapter, max_tokens=40 * SEQ_LEN):
    return build_token_sequences("wiki-en", adapter.tokenizer, SEQ_LEN, "train", max_tokens)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    return x[torch.argsort(x[:, 0] * 1e3 + x[:, 1])]


def test_one_epoch_is_every_cached_row_once(adapter, tmp_path):
    packed = _packed(adapter)
    stream = ActivationStream(adapter, LAYER, packed, buffer_rows=100, llm_batch_size=3)
    assert len(stream.block_rows) > 3  # several shuffle blocks
    n = stream.n_rows
    key = CacheKey("tiny", LAYER, "wiki-en", packed.n_tokens, SEQ_LEN)
    cache = ActivationCache.build_or_load(tmp_path, key, adapter, packed)
    assert cache.n_rows == n
    full = torch.cat(list(stream.iter_batches(n, n_tokens=n, normalise=False)))
    # the same rows (each once), in another order
    torch.testing.assert_close(_sorted_rows(full), _sorted_rows(cache.rows(slice(None))), rtol=1e-5, atol=1e-5)
    assert not torch.equal(full, cache.rows(slice(None)))


def test_second_epoch_reshuffles_the_same_rows(adapter):
    stream = ActivationStream(adapter, LAYER, _packed(adapter), buffer_rows=100)
    n = stream.n_rows
    both = torch.cat(list(stream.iter_batches(n, n_tokens=2 * n, normalise=False)))
    first, second = both[:n], both[n:]
    torch.testing.assert_close(_sorted_rows(first), _sorted_rows(second))
    assert not torch.equal(first, second)
    assert stream.provenance(2 * n, n)["epochs"] == 2.0


def test_resume_equals_the_tail_and_reruns_only_the_block_it_starts_in(adapter):
    packed = _packed(adapter)
    full = torch.cat(list(ActivationStream(adapter, LAYER, packed, buffer_rows=100).iter_batches(32, n_tokens=320)))
    resumed_stream = ActivationStream(adapter, LAYER, packed, buffer_rows=100)
    before = resumed_stream.lm_sequences  # the first block (normalisation)
    tail = torch.cat(list(resumed_stream.iter_batches(32, n_tokens=320, start_token=6 * 32)))
    torch.testing.assert_close(tail, full[6 * 32 :])
    first_block, last_block = resumed_stream._locate(6 * 32)[1], resumed_stream._locate(319)[1]
    blocks = range(max(first_block, 1), last_block + 1)  # block 0 is already in memory from the statistics
    per_block = trainable_positions(packed.tokens, adapter.sequence_start).split(resumed_stream.seqs_per_block)
    assert first_block > 0 and resumed_stream.lm_sequences - before == sum(len(per_block[b]) for b in blocks)


def test_normalised_batches_use_first_block_statistics(adapter):
    stream = ActivationStream(adapter, LAYER, _packed(adapter), buffer_rows=10_000)  # one block: all rows
    x = torch.cat(list(stream.iter_batches(stream.n_rows, n_tokens=stream.n_rows)))
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4, rtol=0)
    assert abs(float(x.pow(2).sum(-1).mean() / x.shape[1]) - 1.0) < 1e-3


def test_unique_sequences_is_the_shortest_prefix_with_enough_rows(adapter):
    bos = adapter.sequence_start
    packed = unique_sequences(lambda n: _packed(adapter, n), 100, bos, SEQ_LEN)
    rows = trainable_positions(packed.tokens, bos).sum(1).cumsum(0)
    assert int(rows[-1]) >= 100 and (len(rows) == 1 or int(rows[-2]) < 100)
    # a corpus smaller than asked: all of it
    everything = unique_sequences(lambda n: _packed(adapter, min(n, 5 * SEQ_LEN)), 10_000, bos, SEQ_LEN)
    assert everything.n_sequences == 5
