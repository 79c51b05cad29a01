"""One LM pass over the packed tokens, stored memory-mapped on disk and reused by every SAE.

Layout of a cache directory ``root/<model>/layer_<L>/<corpus>_T<n_tokens>_L<seq_len>``:

* ``activations.f32`` (or ``.f16`` / ``.bf16``, the storage dtype being an option): raw little-endian rows
  ``[n_rows, d_model]`` (the special positions of `models.sequence_start` excluded: each row's first position,
  and separators where BOS is EOS);
* ``meta.json`` (written last): shape, dtype, key, corpus provenance, sha256 of the activation
  file, versions, and normalisation statistics ``mean`` / ``scale``.

A build writes into a temporary sibling directory and renames it into place, so an interrupted
build never leaves a directory that looks valid; it runs under the cache's lock (`abstopk_eval.locks`), so
concurrent processes build it once and the others reuse it. Reuse checks the sha256 of the activations once per
file version: with a digest directory the digest is remembered by (path, size, mtime) (`io.sha256_file_cached`),
and a build records the digest it computed, so a multi-gigabyte cache is not re-hashed on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from abstopk_eval import faults, locks
from abstopk_eval.data.corpus import PackedTokens
from abstopk_eval.errors import UserError
from abstopk_eval.io import (
    atomic_directory,
    atomic_write_text,
    pid_alive,
    record_sha256,
    sha256_bytes,
    sha256_file,
    sha256_file_cached,
)
from abstopk_eval.models.sequence_start import SequenceStart

logger = logging.getLogger("abstopk_eval.data")

META_FILE = "meta.json"
FORMAT_VERSION = 1
RAM_LIMIT_BYTES = 4 * 1024**3
_HASH_CHUNK_BYTES = 64 * 1024**2
_DTYPES = {
    "float32": ("f32", np.dtype("<f4")),
    "float16": ("f16", np.dtype("<f2")),
    "bfloat16": ("bf16", np.dtype("<u2")),  # numpy has no bfloat16: stored as its bits, read back through torch
}
_TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class CacheKey:
    """What identifies one activation cache."""

    model: str
    layer: int
    corpus: str
    n_tokens: int
    seq_len: int
    split: str = "train"
    source: str = ""
    """Hash of what else decides the activations (the model's weights identity and dtype, the corpus version);
    its first 8 digits end the folder name, so another model or text never meets this cache."""

    @property
    def dirname(self) -> str:
        """e.g. ``gemma-3-270m/layer_9/wiki-en_T500000_L128-1a2b3c4d`` (held-out split: ``wiki-en-eval_...``)."""
        model = self.model.replace("/", "__")
        corpus = self.corpus if self.split == "train" else f"{self.corpus}-{self.split}"
        suffix = f"-{self.source[:8]}" if self.source else ""
        return f"{model}/layer_{self.layer}/{corpus}_T{self.n_tokens}_L{self.seq_len}{suffix}"


def _corrupt(path: Path, reason: str) -> UserError:
    return UserError(f"activation cache at {path} is corrupt ({reason}); delete it and rerun to rebuild")


def _tokens_sha256(tokens: torch.Tensor) -> str:
    return sha256_bytes(np.ascontiguousarray(tokens.cpu().numpy().astype("<i8")).tobytes())


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        out["transformers"] = "not installed"
    return out


def _clean_stale_tmp(final: Path) -> None:
    """Remove temp dirs of interrupted builds of ``final`` (those whose process is gone)."""
    prefix = f".{final.name}{_TMP_MARK}"
    if not final.parent.is_dir():
        return
    for path in final.parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        try:
            pid = int(path.name[len(prefix) :].split("-")[0])
        except ValueError:
            pid = -1
        if pid == os.getpid() or pid <= 0 or not pid_alive(pid):
            logger.info("removing the leftover of an interrupted cache build: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _stored(rows: torch.Tensor, dtype: str) -> np.ndarray:
    """float32 rows as the storage dtype's numpy array (bfloat16 as its 16 bits)."""
    if dtype == "bfloat16":
        return rows.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return rows.numpy().astype(_DTYPES[dtype][1], copy=False)


def _as_float32(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows back as a float32 tensor."""
    rows = np.ascontiguousarray(stored) if dtype == "bfloat16" else np.ascontiguousarray(stored, dtype=np.float32)
    rows = rows if rows.flags.writeable else rows.copy()  # torch wants writable memory (a read-only memmap is not)
    if dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(rows)


def trainable_positions(tokens: torch.Tensor, start: SequenceStart) -> torch.Tensor:
    """[N, T] bool: the positions whose activations are trained on and cached, i.e. not the special positions of
    the tokenizer's sequence-start rule (`models.sequence_start`: each row's first position, and separators where
    BOS is EOS); one rule for caches, streams and the budget checks."""
    return ~start.special_mask(tokens)


class _Moments:
    """Streaming mean and total squared deviation (Chan et al.), in float64."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.mean = np.zeros(d, dtype=np.float64)
        self.m2 = 0.0  # sum over rows and dims of (x - mean)^2

    def update(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        x = rows.astype(np.float64, copy=False)
        nb = len(x)
        mean_b = x.mean(axis=0)
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.n + nb
        delta = mean_b - self.mean
        self.m2 += m2_b + float((delta**2).sum()) * self.n * nb / n
        self.mean += delta * (nb / n)
        self.n = n

    def scale(self, d: int) -> float:
        return math.sqrt(self.m2 / (self.n * d)) if self.n else 0.0


class ActivationCache:
    """Read access to a validated activation cache directory."""

    def __init__(self, directory: Path, meta: dict[str, Any], activations: np.memmap) -> None:
        self.directory = directory
        self.meta = meta
        self._activations = activations
        self._mean = torch.tensor(meta["mean"], dtype=torch.float32)
        self._scale = float(meta["scale"])
        self._ram: torch.Tensor | None = None

    # ------------------------------------------------------------------ accessors

    @property
    def n_rows(self) -> int:
        return int(self._activations.shape[0])

    @property
    def d_in(self) -> int:
        return int(self._activations.shape[1])

    @property
    def activations(self) -> np.memmap:
        """The raw rows ``[n_rows, d_in]`` (read-only memmap)."""
        return self._activations

    @property
    def dtype(self) -> str:
        return str(self.meta["dtype"])

    def rows(self, index: np.ndarray | slice) -> torch.Tensor:
        """Raw rows `index` as float32 (whatever the storage dtype)."""
        return _as_float32(np.asarray(self._activations[index]), self.dtype)

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def key(self) -> CacheKey:
        return CacheKey(**self.meta["key"])

    def provenance(self) -> dict[str, Any]:
        """Everything a results file should record about where these activations came from."""
        m = self.meta
        return {
            "path": str(self.directory),
            "key": dict(m["key"]),
            "shape": list(m["shape"]),
            "dtype": m["dtype"],
            "sha256": m["sha256"],
            "tokens_sha256": m.get("tokens_sha256"),
            "scale": m["scale"],
            "corpus": dict(m.get("corpus", {})),
            "created": m.get("created"),
            "versions": dict(m.get("versions", {})),
        }

    # ------------------------------------------------------------------ build / load

    @classmethod
    def build_or_load(
        cls,
        root: Path,
        key: CacheKey,
        adapter: Any,
        packed: PackedTokens,
        batch_size: int = 8,
        dtype: str = "float32",
        *,
        d_in: int | None = None,
        verify: bool = True,
        digest_dir: Path | None = None,
    ) -> ActivationCache:
        """Load ``root/key.dirname`` if it exists and validates, else run ``adapter`` over ``packed``.

        ``digest_dir``: where verified digests are remembered (`io.sha256_file_cached`); None hashes every time."""
        if packed.tokens.ndim != 2 or packed.tokens.shape[1] != key.seq_len:
            raise ValueError(f"packed tokens {tuple(packed.tokens.shape)} do not match key.seq_len={key.seq_len}")
        final = Path(root) / key.dirname
        expected_d = d_in if d_in is not None else getattr(adapter, "d_model", None)
        tokens_sha = _tokens_sha256(packed.tokens)
        if not final.is_dir() or not any(final.iterdir()):
            # create once: the builder holds the lock; a process that waited for it finds the cache built
            with locks.exclusive(final, f"the activation cache {final}"):
                if final.is_dir() and not any(final.iterdir()):
                    final.rmdir()  # an empty directory holds nothing to protect
                if not final.exists():
                    cls._build(final, key, adapter, packed, batch_size, dtype, expected_d, tokens_sha)
                    cache = cls.load(final, key=key, d_in=expected_d, verify=False)
                    if digest_dir is not None:  # the digest just computed: the next reuse need not hash again
                        record_sha256(final / cache.meta["file"], digest_dir, cache.meta["sha256"])
                    return cache
        # a finished cache is never replaced (a corrupt one is an error), so reading it needs no lock
        cache = cls.load(final, key=key, d_in=expected_d, verify=verify, digest_dir=digest_dir)
        if cache.meta.get("tokens_sha256") not in (None, tokens_sha):
            raise UserError(
                f"activation cache at {final} was built from different tokens than this run's "
                f"{key.corpus} sequences (tokenizer or corpus changed); delete it and rerun to rebuild"
            )
        logger.info("reusing activation cache %s (%d rows x %d)", final, cache.n_rows, cache.d_in)
        return cache

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        key: CacheKey | None = None,
        d_in: int | None = None,
        verify: bool = True,
        digest_dir: Path | None = None,
    ) -> ActivationCache:
        """Open and validate a cache directory (``verify``: check the sha256 of the activations, remembered per file
        version in ``digest_dir`` when given)."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise _corrupt(directory, f"{META_FILE} is missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise _corrupt(directory, f"{META_FILE} is unreadable: {type(err).__name__}") from None
        if not isinstance(meta, dict):
            raise _corrupt(directory, f"{META_FILE} is not a JSON object")
        missing = [
            f for f in ("format_version", "shape", "dtype", "file", "key", "sha256", "mean", "scale") if f not in meta
        ]
        if missing:
            raise _corrupt(directory, f"{META_FILE} lacks {', '.join(missing)}")
        try:
            n_rows, d = (int(v) for v in meta["shape"])
            _, np_dtype = _DTYPES[meta["dtype"]]
            stored_key = CacheKey(**meta["key"])
            mean = [float(v) for v in meta["mean"]]
            scale = float(meta["scale"])
            file_name = str(meta["file"])
        except (TypeError, ValueError, KeyError) as err:
            raise _corrupt(directory, f"{META_FILE} has a malformed field: {type(err).__name__}: {err}") from None
        if meta["format_version"] != FORMAT_VERSION:
            raise _corrupt(directory, f"format_version {meta['format_version']!r}, expected {FORMAT_VERSION}")
        if n_rows <= 0 or d <= 0 or len(mean) != d or not (math.isfinite(scale) and scale > 0):
            raise _corrupt(directory, f"{META_FILE} has inconsistent shape/mean/scale")
        if "/" in file_name or file_name.startswith("."):
            raise _corrupt(directory, f"{META_FILE} names a bad activation file {file_name!r}")
        if key is not None and stored_key != key:
            raise _corrupt(directory, f"it was written for {stored_key}, not {key}")
        if d_in is not None and d != int(d_in):
            raise UserError(
                f"activation cache at {directory} has d_model={d} but the model/SAE expects {d_in}; "
                "delete it and rerun to rebuild"
            )
        act_path = directory / file_name
        if not act_path.is_file():
            raise _corrupt(directory, f"{file_name} is missing")
        expected_size = n_rows * d * np_dtype.itemsize
        size = act_path.stat().st_size
        if size != expected_size:
            raise _corrupt(directory, f"{file_name} has {size} bytes, expected {expected_size}")
        if verify:
            digest = (
                sha256_file(act_path, block=_HASH_CHUNK_BYTES)
                if digest_dir is None
                else sha256_file_cached(act_path, digest_dir)
            )
            if digest != meta["sha256"]:
                raise _corrupt(directory, f"sha256 of {file_name} does not match {META_FILE}")
        memmap = np.memmap(act_path, dtype=np_dtype, mode="r", shape=(n_rows, d))
        return cls(directory, meta, memmap)

    @staticmethod
    def _build(
        final: Path,
        key: CacheKey,
        adapter: Any,
        packed: PackedTokens,
        batch_size: int,
        dtype: str,
        expected_d: int | None,
        tokens_sha: str,
    ) -> None:
        if dtype not in _DTYPES:
            raise UserError(f"unsupported activation cache dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        if batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        suffix, np_dtype = _DTYPES[dtype]
        file_name = f"activations.{suffix}"
        tokens = packed.tokens
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise UserError(f"cannot build an activation cache from token tensor of shape {tuple(tokens.shape)}")
        start = adapter.sequence_start  # the one sequence-start rule (models.sequence_start)
        keep = trainable_positions(tokens, start)
        n_rows = int(keep.sum())
        if n_rows == 0:
            raise UserError("every token position is special (sequence start): nothing to cache")

        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_tmp(final)
        # staged as .<name>.tmp-<pid>-<random>, the name _clean_stale_tmp parses; a concurrent build that
        # finished first is an error (FileExistsError), as before
        staging = f".{final.name}{_TMP_MARK}{os.getpid()}-"
        with atomic_directory(final, prefix=staging, replace=False) as tmp:
            act_path = tmp / file_name
            digest = hashlib.sha256()
            moments: _Moments | None = None
            out: np.memmap | None = None
            row = 0
            n_batches = math.ceil(tokens.shape[0] / batch_size)
            logger.info("building activation cache %s: %d sequences -> %d rows", final, tokens.shape[0], n_rows)
            with torch.no_grad():
                for b in tqdm(range(n_batches), desc=f"caching {key.model} layer {key.layer}", unit="batch"):
                    ids = tokens[b * batch_size : (b + 1) * batch_size]
                    acts = adapter.activations(ids, key.layer)
                    if acts.ndim != 3 or tuple(acts.shape[:2]) != tuple(ids.shape):
                        raise RuntimeError(f"adapter returned shape {tuple(acts.shape)} for input {tuple(ids.shape)}")
                    if out is None:
                        d = int(acts.shape[2])
                        if expected_d is not None and d != int(expected_d):
                            raise UserError(f"the model returned d_model={d} activations, expected {expected_d}")
                        out = np.memmap(act_path, dtype=np_dtype, mode="w+", shape=(n_rows, d))
                        moments = _Moments(d)
                    mask = keep[b * batch_size : (b + 1) * batch_size]
                    exact = acts.detach().to("cpu", torch.float32)[mask]
                    if not torch.isfinite(exact).all():
                        raise UserError(f"the model produced non-finite activations at layer {key.layer}")
                    rows = _stored(exact, dtype)
                    out[row : row + len(rows)] = rows
                    faults.point("cache-build")
                    digest.update(np.ascontiguousarray(rows).tobytes())
                    assert moments is not None
                    moments.update(_as_float32(rows, dtype).numpy())  # statistics of the rows as stored
                    row += len(rows)
            assert out is not None and moments is not None and row == n_rows
            out.flush()
            del out
            d = moments.mean.shape[0]
            meta = {
                "format_version": FORMAT_VERSION,
                "file": file_name,
                "shape": [n_rows, d],
                "dtype": dtype,
                "key": asdict(key),
                "bos_token_id": start.start_token_id,
                "sequence_start": start.record(),
                "corpus": packed.provenance(),
                "tokens_sha256": tokens_sha,
                "sha256": digest.hexdigest(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": _versions(),
                "mean": moments.mean.tolist(),
                "scale": moments.scale(d),
            }
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1))
        logger.info("wrote activation cache %s (%d rows x %d, scale %.4g)", final, n_rows, d, meta["scale"])

    # ------------------------------------------------------------------ batches

    def _source(self, ram_limit_bytes: int) -> torch.Tensor | np.memmap:
        if self._ram is not None:
            return self._ram
        if self._activations.nbytes < ram_limit_bytes:
            self._ram = _as_float32(np.array(self._activations), self.dtype)
            return self._ram
        return self._activations

    def _epoch_permutation(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.n_rows)

    def iter_batches(
        self,
        batch_size: int,
        *,
        n_tokens: int,
        seed: int,
        start_token: int = 0,
        normalise: bool = True,
        ram_limit_bytes: int = RAM_LIMIT_BYTES,
        rows: tuple[int, int] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Float32 batches ``[batch_size, d_in]`` drawn without replacement per epoch (seeded
        permutation, a new one each epoch) until ``ceil(n_tokens / batch_size)`` batches are out.

        ``start_token`` (a multiple of ``batch_size``) resumes: the batches equal the tail of the
        sequence started at 0. Rows within a batch are in ascending index order.

        ``rows=(start, stop)`` reads only those rows of every batch (a data-parallel rank's share,
        `training.distributed.shard_bounds`): the other ranks' rows are never read from disk.
        """
        if batch_size <= 0 or n_tokens <= 0:
            raise UserError(f"batch_size and n_tokens must be positive, got {batch_size} and {n_tokens}")
        if start_token < 0 or start_token % batch_size:
            raise UserError(
                f"start_token must be a non-negative multiple of batch_size={batch_size}, got {start_token}"
            )
        n_batches = math.ceil(n_tokens / batch_size)
        first = start_token // batch_size
        if first > n_batches:
            raise UserError(f"start_token {start_token} is past the end of the run ({n_tokens} tokens)")
        source = self._source(ram_limit_bytes)
        mean, scale = self._mean, self._scale
        n = self.n_rows
        perm_epoch, perm = -1, np.empty(0, dtype=np.int64)
        for b in range(first, n_batches):
            lo, hi = b * batch_size, (b + 1) * batch_size
            parts = []
            pos = lo
            while pos < hi:  # a batch may straddle two (or more) epochs
                epoch, offset = divmod(pos, n)
                if epoch != perm_epoch:
                    perm_epoch, perm = epoch, self._epoch_permutation(seed, epoch)
                take = min(hi - pos, n - offset)
                parts.append(perm[offset : offset + take])
                pos += take
            idx = np.sort(np.concatenate(parts))
            if rows is not None:
                idx = idx[rows[0] : rows[1]]
            if isinstance(source, torch.Tensor):
                x = source[torch.from_numpy(idx)]
            else:
                x = _as_float32(np.asarray(source[idx]), self.dtype)
            if normalise:
                x = (x - mean) / scale
            yield x
