"""A small synthetic training set and its batch stream, shared by the trainer tests (one process and two)."""

from __future__ import annotations

import torch

from abstopk_eval.config import get_preset

D_IN = 8
PRESET = get_preset("smoke")  # 32 steps of 64, checkpoints every 8 steps
VARIANTS = ("relu", "jumprelu", "topk", "batchtopk", "abstopk", "batch-abstopk")
"""Every registered variant, batch-level selection included (the data-parallel tests train each)."""


def _data(n: int = 4096, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(32, D_IN, generator=g)
    codes = torch.randn(n, 32, generator=g) * (torch.rand(n, 32, generator=g) < 0.1)
    return codes @ atoms + 0.01 * torch.randn(n, D_IN, generator=g)


DATA = _data()
"""4096 sparse combinations of 32 random atoms in D_IN dimensions, plus a little noise."""
MEAN, SCALE = DATA.mean(0), float((DATA - DATA.mean(0)).pow(2).sum(-1).mean().div(D_IN).sqrt())


class Interrupted(Exception):
    """Raised by a stream made with `stop_after`, standing in for a killed training run."""


def stream_factory(stop_after: int | None = None, calls: list | None = None, rows: tuple[int, int] | None = None):
    """seed -> (start_step -> normalised batches of DATA in a seeded order); `calls` records each start step and
    `stop_after` raises `Interrupted` at that step; `rows=(start, stop)` yields only those rows of each batch (a
    data-parallel rank's share, as `ActivationCache.iter_batches(rows=...)` reads it)."""

    def for_seed(seed: int):
        def stream(start_step: int):
            if calls is not None:
                calls.append(start_step)
            g = torch.Generator().manual_seed(seed)
            order = [torch.randperm(DATA.shape[0], generator=g) for _ in range(PRESET.total_steps)]
            for step in range(start_step, PRESET.total_steps):
                if stop_after is not None and step >= stop_after:
                    raise Interrupted
                idx = order[step][: PRESET.batch_size].sort().values
                if rows is not None:
                    idx = idx[rows[0] : rows[1]]
                yield (DATA[idx] - MEAN) / SCALE

        return stream

    return for_seed
