"""Create-once protocol for shared cache directories (model copies, activation caches).

Several processes may want the same cache at once (two terminals, the ranks of a torchrun job, the array tasks of a
sweep). Whoever builds or repairs a cache directory holds an exclusive `fcntl.flock` on its lock file
``.<name>.lock`` beside it; the others wait for the lock, then find the finished directory and reuse it. The kernel
releases the lock when its holder exits or is killed, so a crashed builder never leaves a stale lock (the lock file
itself stays; it is empty apart from the holder's pid and host, shown to waiters). The directory itself is still
built in a staging sibling and renamed into place (`io.atomic_directory`), so a reader that does not lock never sees
half of one. flock needs a local file system or an NFS that supports it (NFSv4 does). Where the lock file cannot be
written (a read-only shared cache) the cache is used without a lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from abstopk_eval.errors import UserError

log = logging.getLogger("abstopk_eval.locks")

LOCK_TIMEOUT_ENV = "ABSTOPK_LOCK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 6 * 3600.0
"""How long a process waits for another's build (an activation cache of the paper preset takes hours on a CPU)."""
_POLL_S = 0.2


def lock_path(target: Path) -> Path:
    """`.<name>.lock` beside `target` (hidden, so no layout glob takes it for a cache)."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _timeout() -> float:
    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise UserError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds") from None


@contextlib.contextmanager
def exclusive(target: Path, what: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the lock of directory `target` for the block (waiting for another holder, at most `timeout_s`).

    `what` names the cache in the waiting message and the timeout's one-line error.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = _timeout() if timeout_s is None else timeout_s
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        log.info("cannot write the lock %s (%s): using %s without a lock", path, err.strerror, what)
        yield  # a read-only shared cache: nothing here can build or repair it anyway
        return
    try:
        began, announced = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if not announced:
                    log.info("waiting for %s, which is building %s (lock %s)", holder, what, path)
                    announced = True
                if time.monotonic() - began > limit:
                    raise UserError(
                        f"gave up after {limit:.0f} s waiting for {holder} to finish building {what} "
                        f"(lock {path}); stop that process, or raise {LOCK_TIMEOUT_ENV}"
                    ) from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    try:
        pid, host = path.read_text().split()[:2]
        return f"process {pid} on {host}"
    except (OSError, ValueError):
        return "another process"
