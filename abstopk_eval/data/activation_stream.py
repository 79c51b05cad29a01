"""Training activations streamed from the model: for budgets beyond a cache, each token is seen once.

The training sequences (the fewest packed rows of the corpus that give the budget's unique activations, see
`unique_sequences`) are cut into blocks of `buffer_rows` activations. A block is one run of the model over its
sequences (`llm_batch_size` at a time); its rows (positions `trainable_positions` keeps, as a cache would) are
shuffled in a seeded order (seed, epoch, block) and the batches are consecutive slices of the blocks' rows, epoch
after epoch. So the stream is deterministic, and resuming at a step recomputes only the block it falls in: which
block that is follows from the tokens alone, without running the model.

Normalisation (mean, scale) and the batch-level variants' calibration rows come from the first block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from abstopk_eval.data.activation_cache import trainable_positions
from abstopk_eval.data.corpus import PackedTokens
from abstopk_eval.errors import UserError
from abstopk_eval.models.sequence_start import SequenceStart


def unique_sequences(
    build: Callable[[int], PackedTokens], rows_wanted: int, start: SequenceStart, seq_len: int
) -> PackedTokens:
    """The fewest leading packed sequences with at least `rows_wanted` trainable positions (all of the corpus when
    it has fewer). `build(max_tokens)` packs the corpus's training split; it is asked again for more while the
    corpus has more than the last answer."""
    ask = math.ceil(rows_wanted * seq_len / (seq_len - 1) * 1.05) + seq_len
    while True:
        packed = build(ask)
        rows = trainable_positions(packed.tokens, start).sum(1).cumsum(0)
        if int(rows[-1]) >= rows_wanted or packed.n_tokens < ask:
            break
        ask *= 2
    n_seq = min(int(torch.searchsorted(rows, torch.tensor(rows_wanted))) + 1, packed.n_sequences)
    return PackedTokens(
        tokens=packed.tokens[:n_seq],
        info=packed.info,
        split=packed.split,
        n_documents_used=packed.n_documents_used,
        requested_tokens=packed.requested_tokens,
    )


class ActivationStream:
    """Shuffled blocks of activations computed by `adapter` at `layer` over `packed` (see the module docstring)."""

    def __init__(
        self,
        adapter: Any,
        layer: int,
        packed: PackedTokens,
        *,
        buffer_rows: int,
        seed: int = 0,
        llm_batch_size: int = 8,
    ) -> None:
        if buffer_rows <= 0 or llm_batch_size <= 0:
            raise UserError("the stream's buffer and LM batch size must be positive")
        self.adapter, self.layer, self.packed, self.seed = adapter, layer, packed, seed
        self.llm_batch_size = llm_batch_size
        self.keep = trainable_positions(packed.tokens, adapter.sequence_start)
        self.seqs_per_block = max(1, buffer_rows // max(packed.seq_len - 1, 1))
        per_seq = self.keep.sum(1)
        self.block_rows = torch.stack([chunk.sum() for chunk in per_seq.split(self.seqs_per_block)])
        """Rows of each block of one epoch."""
        self.block_starts = torch.cat([torch.zeros(1, dtype=torch.long), self.block_rows.cumsum(0)])
        if self.n_rows == 0:
            raise UserError("every streamed position is special (sequence start): nothing to train on")
        self._memo: tuple[tuple[int, int], torch.Tensor] | None = None
        self.lm_sequences = 0
        """Sequences the model has been run on so far (blocks recomputed on resume count again)."""
        first = self._raw_block(0, 0)
        mean = first.double().mean(0)
        self._mean = mean.float()
        self._scale = float(((first.double() - mean) ** 2).sum().div(first.numel()).sqrt())

    @property
    def n_rows(self) -> int:
        """Unique activations (one epoch)."""
        return int(self.block_starts[-1])

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    @property
    def scale(self) -> float:
        return self._scale

    def _raw_block(self, epoch: int, block: int) -> torch.Tensor:
        """The block's activations in their shuffled order (rows on the model's device, float32)."""
        if self._memo is not None and self._memo[0] == (epoch, block):
            return self._memo[1]
        lo = block * self.seqs_per_block
        tokens = self.packed.tokens[lo : lo + self.seqs_per_block]
        keep = self.keep[lo : lo + self.seqs_per_block]
        parts = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], self.llm_batch_size):
                ids = tokens[start : start + self.llm_batch_size]
                acts = self.adapter.activations(ids, self.layer)
                parts.append(acts[keep[start : start + self.llm_batch_size].to(acts.device)])
                self.lm_sequences += ids.shape[0]
        rows = torch.cat(parts)
        if not torch.isfinite(rows).all():
            raise UserError(f"the model produced non-finite activations at layer {self.layer}")
        order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(self._block_seed(epoch, block)))
        rows = rows[order.to(rows.device)]
        self._memo = ((epoch, block), rows)
        return rows

    def _block_seed(self, epoch: int, block: int) -> int:
        return (self.seed * 1_000_003 + epoch) * 1_000_003 + block

    def calibration_rows(self, n: int) -> torch.Tensor:
        """Up to `n` raw activations of the first block (CPU), for threshold calibration."""
        return self._raw_block(0, 0)[:n].cpu()

    def _locate(self, row: int) -> tuple[int, int, int]:
        """(epoch, block, offset within the block's shuffled rows) of global row `row`."""
        epoch, rem = divmod(row, self.n_rows)
        block = int(torch.searchsorted(self.block_starts, torch.tensor(rem), right=True)) - 1
        return epoch, block, rem - int(self.block_starts[block])

    def iter_batches(
        self, batch_size: int, *, n_tokens: int, start_token: int = 0, normalise: bool = True
    ) -> Iterator[torch.Tensor]:
        """`ceil(n_tokens / batch_size)` batches `[batch_size, d]` of consecutive shuffled rows; `start_token` (a
        multiple of batch_size) resumes: the batches equal the tail of the stream started at 0."""
        if batch_size <= 0 or n_tokens <= 0 or start_token < 0 or start_token % batch_size:
            raise UserError(f"bad stream request: batch {batch_size}, tokens {n_tokens}, start {start_token}")
        for b in range(start_token // batch_size, math.ceil(n_tokens / batch_size)):
            pos, end, parts = b * batch_size, (b + 1) * batch_size, []
            while pos < end:
                epoch, block, offset = self._locate(pos)
                rows = self._raw_block(epoch, block)
                take = min(end - pos, rows.shape[0] - offset)
                parts.append(rows[offset : offset + take])
                pos += take
            x = torch.cat(parts)
            yield (x - self._mean.to(x.device)) / self._scale if normalise else x

    def provenance(self, n_tokens: int, batch_size: int) -> dict[str, Any]:
        """What training.json records: the unique activations, the passes over them, how they were shuffled."""
        seen = math.ceil(n_tokens / batch_size) * batch_size
        return {
            "source": "stream",
            "unique_tokens": self.n_rows,
            "epochs": seen / self.n_rows,
            "sequences": self.packed.n_sequences,
            "buffer_rows": int(self.block_rows.max()),
            "blocks_per_epoch": len(self.block_rows),
            "order_seed": self.seed,
            "scale": self._scale,
            "normalisation_from": f"first block ({int(self.block_rows[0])} rows)",
        }
