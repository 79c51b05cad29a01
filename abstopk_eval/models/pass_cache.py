"""On-disk cache of the language-model passes that do not depend on an SAE, so a second run (or `compare` of a
new SAE) does only the SAE-dependent work.

Layout: ``{cache_dir}/model_passes/<model key>-<hash16>/layer_<L>/<kind>/<key hash>.safetensors`` with the
folder's ``identity.json``. The folder hash is that of the *pass identity* (`pass_identity`): the model's run
identity (key, what pins its weights and tokenizer, its dtype, its sequence-start rule), the device type and the
torch / transformers versions (their numerics). Each entry's key hashes what else decides it, including the
very token ids it ran on (so tokenisation, the sequence-start rule, truncation to the context length and padding
are part of it by construction), the layer and the batching.

* Tensors only (safetensors, no pickle). Every file records the sha256 of its tensors' bytes (and its key) in its
  metadata; a file that does not load, whose checksum differs or whose key is another's is **rebuilt** (it holds
  derived data the model can always recompute; a warning names it), never used.
* Written atomically (`io.atomic_write_bytes`) under an exclusive `locks.exclusive` lock of the entry, so
  concurrent processes build an entry once: the others wait for the lock, then load it. Where the entry cannot
  be written (a read-only or full cache dir) the pass is used without being stored (a warning says so).
* `hits` / `builds` count what a process read and built (tests assert that a warm run builds nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from abstopk_eval import locks
from abstopk_eval.identity import canonical_json, identity_hash
from abstopk_eval.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("abstopk_eval.pass_cache")

PASS_CACHE_VERSION = 1
"""Bumped when what an entry holds changes meaning (older entries then sit in another folder, unused)."""
SUBDIR = "model_passes"
ROOT_ENV = "ABSTOPK_MODEL_PASS_CACHE"
"""Where the model-pass cache lives instead of ``{cache_dir}/model_passes``; ``off`` runs without it."""
_SHA_KEY = "tensors_sha256"
_KEY_KEY = "key"


def pass_cache_root(cache_dir: Path) -> Path | None:
    """The cache's root for a run whose cache dir is `cache_dir` (`ROOT_ENV` overrides; None: caching off)."""
    value = os.environ.get(ROOT_ENV, "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else Path(cache_dir) / SUBDIR


def pass_identity(model_identity: Mapping[str, Any], device: str) -> dict[str, Any]:
    """What decides every pass of one model besides its inputs: the model's run identity, the device type and the
    versions of the libraries that compute it."""
    from abstopk_eval.provenance import package_version

    return {
        "version": PASS_CACHE_VERSION,
        "model": dict(model_identity),
        "device": torch.device(device).type,
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
    }


def tensor_digest(*tensors: Tensor) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (a cache key part for the token ids a pass ran on)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + b"\0")
        h.update(tensor_digest(tensors[name]).encode())
    return h.hexdigest()


class CorruptEntry(Exception):
    """A cache file that does not load or does not match its recorded checksum or key."""


@dataclass
class PassCache:
    """Content-keyed cache of SAE-independent model passes of one model (see the module docstring)."""

    root: Path
    """``{cache_dir}/model_passes``."""
    identity: dict[str, Any]
    """`pass_identity(...)`: decides the folder."""
    hits: int = 0
    builds: int = 0
    rebuilt_corrupt: int = 0
    _resume: dict[int, bool] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        key = str(self.identity.get("model", {}).get("key", "model")).replace("/", "--")
        return Path(self.root) / f"{key}-{identity_hash(self.identity)[:16]}"

    def path(self, kind: str, layer: int, key: Mapping[str, Any]) -> Path:
        return self.folder / f"layer_{layer}" / kind / f"{identity_hash(dict(key))[:32]}.safetensors"

    def get_or_build(
        self, kind: str, layer: int, key: Mapping[str, Any], build: Callable[[], dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """The tensors stored for (kind, layer, key), built by `build()` (and stored) when absent or corrupt."""
        path = self.path(kind, layer, key)
        key_json = canonical_json({"kind": kind, "layer": layer, **dict(key)})
        found = self._load(path, key_json)
        if found is not None:
            return found
        with locks.exclusive(path, f"model-pass cache entry {path.name}"):
            found = self._load(path, key_json)  # another process may have built it while we waited
            if found is not None:
                return found
            tensors = {name: t.detach().cpu().contiguous() for name, t in build().items()}
            self.builds += 1
            try:
                self._write(path, tensors, key_json)
            except OSError as err:  # a read-only or full cache dir costs only the recomputation next time
                log.warning("could not store model-pass cache file %s (%s): continuing without it", path, err)
        return tensors

    def _load(self, path: Path, key_json: str) -> dict[str, Tensor] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            tensors, metadata = _decode(data)
            if metadata.get(_KEY_KEY) != key_json:
                raise CorruptEntry("it belongs to another key")
            if metadata.get(_SHA_KEY) != _tensors_sha256(tensors):
                raise CorruptEntry("its checksum does not match")
        except CorruptEntry as err:
            log.warning("model-pass cache file %s is corrupt (%s): rebuilding it", path, err)
            self.rebuilt_corrupt += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return tensors

    def _write(self, path: Path, tensors: dict[str, Tensor], key_json: str) -> None:
        self._write_identity()
        metadata = {_KEY_KEY: key_json, _SHA_KEY: _tensors_sha256(tensors)}
        atomic_write_bytes(path, st_save(tensors, metadata=metadata))

    def _write_identity(self) -> None:
        target = self.folder / "identity.json"
        if not target.exists():
            atomic_write_json(target, self.identity)

    # ------------------------------------------------------------------ resume check of the adapter

    def resume_record(self, layer: int) -> bool | None:
        """Whether resuming after `layer` was found to equal the full pass for this model (None: not checked)."""
        try:
            known = json.loads((self.folder / "resume.json").read_text())
        except (OSError, ValueError):
            return None
        value = known.get(str(layer)) if isinstance(known, dict) else None
        return value if isinstance(value, bool) else None

    def record_resume(self, layer: int, ok: bool) -> None:
        target = self.folder / "resume.json"
        with locks.exclusive(target, "the model-pass cache's resume record"):
            try:
                known = json.loads(target.read_text())
            except (OSError, ValueError):
                known = {}
            known = known if isinstance(known, dict) else {}
            known[str(layer)] = ok
            self._write_identity()
            atomic_write_json(target, known)


def _decode(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file's bytes (CorruptEntry when they do not parse)."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as err:  # truncated or altered bytes: safetensors raises its own error types
        raise CorruptEntry(
            f"it does not load: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    return tensors, metadata


def pass_cache_of(obj: Any) -> PassCache | None:
    """The pass cache attached to an adapter (`ModelAdapter.pass_cache`), or None (stand-ins, caching off)."""
    cache = getattr(obj, "pass_cache", None)
    return cache if isinstance(cache, PassCache) else None


def cached_pass(
    obj: Any, kind: str, layer: int, key: Mapping[str, Any], build: Callable[[], dict[str, Tensor]]
) -> dict[str, Tensor]:
    """`build()`'s tensors, through the pass cache of `obj` (an adapter) where it has one: every SAE-independent
    model pass of an evaluation goes through here, keyed by what decides it besides the pass identity."""
    cache = pass_cache_of(obj)
    return build() if cache is None else cache.get_or_build(kind, layer, key, build)
