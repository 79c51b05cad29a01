"""Data-parallel helpers (torch.distributed): shard each global batch, average gradients, sync latent state.

Launch with `torchrun --nproc_per_node N -m abstopk_eval.run ...` (gloo on CPU, nccl on CUDA). Every rank
holds the whole SAE; each step, rank r trains on its contiguous 1/N of the global batch, gradients are
all-reduced and averaged (what DistributedDataParallel does; done by hand because our sparse step does not
go through the module's forward), and the dead-latent counters and batch thresholds are reduced so every
rank keeps identical state. Per-sample variants then match a single process with the same global batch;
the batch-level variants select their B*k latents within each rank's shard.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str) -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the batch size must divide evenly)."""
    if not active():
        return batch
    if batch.shape[0] % world_size():
        raise ValueError(f"batch of {batch.shape[0]} does not split evenly over {world_size()} ranks")
    return batch.chunk(world_size())[rank()]


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
