"""Finding the folders a run wrote: run and results folders are named `<sae_id>-<hash8>` by their identity."""

from __future__ import annotations

from pathlib import Path


def sae_folder(root: Path, model: str, layer: int, sae_id: str) -> Path:
    """The one folder of SAE `sae_id` under `root/<model>/layer_<L>/` (a runs or results dir)."""
    matches = sorted(Path(root, model, f"layer_{layer}").glob(f"{sae_id}-*"))
    assert len(matches) == 1, f"expected one folder for {sae_id}, found {[m.name for m in matches]}"
    return matches[0]
