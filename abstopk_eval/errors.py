"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input or a missing prerequisite the user can fix (message is one line)."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""Write errors that are the machine's state, not a bug: reported in one line (exit 1), like a `UserError`."""


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI entry point so a `UserError` prints `error: <msg>` and exits with status 2 (a full disk: one line,
    status 1)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            where = f" writing {err.filename}" if err.filename else ""
            print(
                f"error: no space left on the device{where}; every file written before is intact (writes are atomic): "
                "free space and rerun the same command",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
