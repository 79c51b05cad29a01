"""Data-parallel helpers (torch.distributed): shard each global batch, average gradients, sync latent state.

Launch with `torchrun --nproc_per_node N -m abstopk_eval.run ...` (gloo on CPU, nccl on CUDA). Every rank
holds the whole SAE; each step, rank r trains on its contiguous 1/N of the global batch, gradients are
all-reduced and averaged (what DistributedDataParallel does; done by hand because our sparse step does not
go through the module's forward), and the dead-latent counters and batch thresholds are reduced so every
rank keeps identical state. Each rank reads only its rows of every global batch (`shard_bounds`, passed to
`ActivationCache.iter_batches`), and the batch-level variants select the top B*k latents of the *global* batch
(`global_cutoff`), so every variant matches a single process with the same global batch.
"""

from __future__ import annotations

import datetime
import os
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


TIMEOUT_ENV = "ABSTOPK_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 6 * 3600
"""How long a rank waits at a collective: ranks evaluate different SAEs and may finish far apart (torch's
default, 10-30 min, would abort a long evaluation)."""


def timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def init_from_env(device: str) -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    timeout = datetime.timedelta(seconds=timeout_s())
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=timeout)
    return True


def my_share(items: list[T]) -> list[T]:
    """This rank's items of a list every rank holds in the same order (round robin): evaluations split SAEs."""
    return items[rank() :: world_size()]


def shard_bounds(global_rows: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of a global batch of `global_rows` rows: the one rule that
    both the batch reader (which then reads only these rows) and `shard` follow."""
    if global_rows % world_size():
        raise ValueError(f"batch of {global_rows} does not split evenly over {world_size()} ranks")
    per = global_rows // world_size()
    return rank() * per, (rank() + 1) * per


def shard(batch: torch.Tensor, global_rows: int) -> torch.Tensor:
    """This rank's rows of a batch: a global batch of `global_rows` rows is cut to `shard_bounds`; a batch that
    already holds only this rank's share (the reader sharded it) is returned as it is."""
    start, stop = shard_bounds(global_rows)
    if batch.shape[0] == global_rows:
        return batch[start:stop]
    if batch.shape[0] == stop - start:
        return batch
    raise ValueError(f"a batch of {batch.shape[0]} rows is neither the global batch ({global_rows}) nor one share")


def global_cutoff(local_top: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The `n_keep`-th largest value over every rank's `local_top` (each rank's own n_keep largest scores, equal
    sizes): the cut-off of a top-n_keep over the global batch. A global winner is among its rank's n_keep
    largest, so keeping the local entries >= the cut-off selects exactly the global top n_keep (up to ties)."""
    if not active():
        return torch.topk(local_top, n_keep, sorted=False).values.min()
    gathered = [torch.empty_like(local_top) for _ in range(world_size())]
    dist.all_gather(gathered, local_top.contiguous())
    return torch.topk(torch.cat(gathered), n_keep, sorted=False).values.min()


def average_gradients(module: torch.nn.Module) -> None:
    if not active():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


def any_rank(mask: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a boolean tensor across ranks."""
    if not active():
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def min_rank_(tensor: torch.Tensor) -> None:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)


def barrier() -> None:
    if active():
        dist.barrier()
