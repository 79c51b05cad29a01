"""Where tensors and the language model live while SAEs train on a GPU.

- `prefetch`: on CUDA, cache batches are gathered and pinned in a background thread and copied to the GPU
  asynchronously one batch ahead, so reading the memory-mapped cache overlaps the SAE steps.
- `offloaded`: on CUDA, the language model waits in host memory while only SAEs train (from a cache), leaving the
  GPU's memory to them; it returns to the GPU afterwards.
Elsewhere both do nothing (see `runtime.on_cuda`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from abstopk_eval import runtime

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _pin(batch: torch.Tensor) -> torch.Tensor:
    return batch.pin_memory()


def prefetch(batches: Iterator[torch.Tensor], device: str, *, depth: int = 2) -> Iterator[torch.Tensor]:
    """`batches` on `device`, the same tensors in the same order; on CUDA read `depth` ahead into pinned memory."""
    if not runtime.on_cuda(device):
        yield from batches
        return
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """False once the consumer has stopped, so the reader draws no further batch."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set() or not put(_pin(batch)):
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            put(_Failed(err))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="abstopk-prefetch", daemon=True)
    thread.start()
    try:
        item = ready.get()
        while item is not _DONE:
            if isinstance(item, _Failed):
                raise item.error
            on_device = item.to(device, non_blocking=True)
            item = ready.get()  # the next batch is read while this one is trained on
            yield on_device
    finally:
        stop.set()
        thread.join(timeout=5)


@contextmanager
def offloaded(model: Any, device: str) -> Iterator[None]:
    """On CUDA, `model` waits on the CPU inside the block and returns to `device` after it."""
    if model is None or not runtime.on_cuda(device):
        yield
        return
    model.to("cpu")
    torch.cuda.empty_cache()
    try:
        yield
    finally:
        model.to(device)
