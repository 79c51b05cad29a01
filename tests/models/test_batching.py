"""Padding and length batching of token-id sequences (abstopk_eval.models.batching)."""

from __future__ import annotations

import pytest
import torch

from abstopk_eval.models.batching import length_batches, pad_sequences


def test_left_and_right_padding_layout():
    seqs = [[5, 6, 7], [8], []]
    ids, mask = pad_sequences(seqs, 0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = pad_sequences(seqs, 9, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_sequences([[]], 3, side="right")  # never zero columns
    assert ids.tolist() == [[3]] and mask.tolist() == [[0]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences(seqs, 0, side="middle")


def test_row_bounded_batches_are_sorted_chunks():
    lengths = [5, 2, 9, 2, 7, 1, 5]
    batches = length_batches(lengths, 3)
    assert batches == [[5, 1, 3], [0, 6, 4], [2]]  # by (length, index), 3 rows each
    assert length_batches(lengths, 3, longest_first=True) == [[2, 4, 0], [6, 1, 3], [5]]


def test_token_bounded_batches_fit_the_budget():
    lengths = [10, 3, 3, 3, 8, 40, 0, 2]
    batches = length_batches(lengths, max_tokens=16, longest_first=True)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: a batch of its own
    for batch in batches[1:]:
        assert max(max(lengths[i] for i in batch), 1) * len(batch) <= 16
    assert batches == [[5], [0], [4, 1], [2, 3, 7, 6]]  # greedy, longest first
    both = length_batches(lengths, 2, max_tokens=16, longest_first=True)
    assert all(len(b) <= 2 for b in both) and both[-1] == [7, 6]


def test_batches_need_a_positive_bound():
    with pytest.raises(ValueError, match="needs max_rows or max_tokens"):
        length_batches([1, 2])
    with pytest.raises(ValueError, match="positive"):
        length_batches([1, 2], 0)
    assert length_batches([], 4) == []
