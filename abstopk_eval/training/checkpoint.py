"""Resumable training checkpoints (torch pickles of the training state; written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from abstopk_eval.io import atomic_file


def atomic_torch_save(path: Path, obj: Any) -> None:
    """`torch.save(obj)` to `path` so readers see either the old checkpoint or the complete new one."""
    with atomic_file(Path(path)) as handle:
        torch.save(obj, handle)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None if absent or unreadable (training then restarts from scratch)."""
    if not Path(path).is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
