"""What a result records about where it came from: typed here, written into every result by one function.

`RunProvenance` is shared by every result of one (model, layer) run: the model and where its weights came from,
the layer, preset, corpus, held-out data and package versions. `SaeProvenance` is what a result records about the
SAE it scored: its id, variant, k, seed and preset, the sha256 of the weights, and for checkpoints from disk their
source. `result_provenance` flattens both into the `provenance` dict of a result file (flat keys, as readers and
committed results expect).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PACKAGES = ("abstopk-eval", "torch", "transformers", "sae-lens", "sae-bench", "transformer-lens", "numpy")


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}}


def source_commit() -> str | None:
    """The git commit of this package's source tree, with ``+dirty`` when it has uncommitted changes (None outside
    a git checkout, e.g. an installed wheel): benchmarks record which code they measured."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def sae_bench_version() -> str:
    """What results put in sae_bench's `sae_bench_commit_hash` field: we run the PyPI release, not a commit."""
    return f"sae-bench {package_version('sae-bench')} (PyPI)"


@dataclass(frozen=True)
class RunProvenance:
    """The model and data every result of one (model, layer) run shares."""

    model: str = ""
    """Model key (registry key, hub id or local folder name)."""
    model_hf_id: str = ""
    model_source: str = ""
    """Where the weights were loaded from (package and quantisation, hub, local folder), with their digest."""
    layer: int = 0
    hook_name: str = ""
    preset: str | None = None
    corpus: str | None = None
    heldout_corpus: dict[str, Any] | None = None
    """Provenance of the held-out token sequences (corpus, split, documents, tokens)."""
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: RunProvenance | Mapping[str, Any] | None) -> RunProvenance:
        """A RunProvenance from itself, None (defaults) or a mapping of its fields (other keys are refused)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise TypeError(f"unknown run provenance field(s): {', '.join(unknown)}")
        return cls(**dict(value))


@dataclass(frozen=True)
class SaeProvenance:
    """What a result records about the SAE it scored."""

    sae_id: str
    variant: str | None = None
    k: int | None = None
    seed: int | None = None
    preset: str | None = None
    sae_weights_sha256: str | None = None
    """sha256 of the sae_lens checkpoint's weights file: a result is current only for these very weights."""
    source: dict[str, Any] | None = None
    """Checkpoints from disk: source path, format, source sha256 and what the source declares; published SAEs
    also their sae_lens release and id (`sae_lens_release`, `sae_lens_id`)."""
    hook_note: str | None = None
    """Set when the SAE reads another hook holding the same activation as the evaluated layer (a
    `blocks.{L+1}.hook_resid_pre` SAE evaluated as layer L); written only when set."""

    @classmethod
    def from_sae(cls, sae_id: str, sae: Any, **fields: Any) -> SaeProvenance:
        """From the checkpoint's sae_lens metadata (variant, k, seed, preset), plus `fields` (the hook note is
        taken from the source unless given)."""
        metadata = getattr(getattr(sae, "cfg", None), "metadata", None)

        def meta(key: str) -> Any:
            return metadata.get(key) if metadata is not None else None

        values = {key: meta(key) for key in ("variant", "k", "seed", "preset")}
        values["hook_note"] = (fields.get("source") or {}).get("hook_note")
        return cls(sae_id=sae_id, **{**values, **fields})

    @property
    def sae_lens_ids(self) -> tuple[str | None, str]:
        """(sae_lens_release_id, sae_lens_id) as sae_bench's result schema names them: a published SAE's release
        and id, else (None, our SAE id)."""
        source = self.source or {}
        return source.get("sae_lens_release"), source.get("sae_lens_id") or self.sae_id


def result_provenance(run: RunProvenance, sae: SaeProvenance | None, **extra: Any) -> dict[str, Any]:
    """The flat `provenance` dict of one result file (SAE fields override the run's, e.g. `preset`)."""
    out = dataclasses.asdict(run)
    if sae is not None:
        source = sae.source
        fields = {k: v for k, v in dataclasses.asdict(sae).items() if k != "source"}
        if fields.get("hook_note") is None:
            fields.pop("hook_note", None)
        # the run's preset stays where the SAE does not state its own (checkpoints from disk, baselines)
        out.update({k: v for k, v in fields.items() if v is not None or k not in out})
        if source is not None:
            out.update({key: source.get(key) for key in ("source_path", "source_format", "source_sha256")})
            out["external"] = dict(source)
    out.update(extra)
    return out
