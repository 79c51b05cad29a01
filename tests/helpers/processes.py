"""Run a function in a forked copy of the test process: to race two processes on one cache, or to SIGKILL one at a
fault point (`abstopk_eval.faults`) and look at what it left on disk. A fork starts in milliseconds with everything
already imported, where a fresh interpreter spends ~10 s importing torch and transformers."""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from abstopk_eval import faults


def fork_call(fn: Callable[..., Any], *args: Any, fault: str | None = None, **kwargs: Any) -> int:
    """Start `fn(*args, **kwargs)` in a child process (with `ABSTOPK_FAULT=fault` when given); returns its pid.

    The child exits 0 when `fn` returns, N on SystemExit(N), 1 when it raises (traceback on stderr); a fault point
    kills it with SIGKILL."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        torch.set_num_threads(1)
        if fault is not None:
            os.environ[faults.FAULT_ENV] = fault
        faults._hits.clear()
        fn(*args, **kwargs)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def wait(pid: int, timeout_s: float = 120.0) -> int:
    """The child's exit status as subprocess reports it (negative: killed by that signal); kills it on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"child {pid} ran past {timeout_s} s")
        time.sleep(0.02)


def killed_at(fault: str, fn: Callable[..., Any], *args: Any, timeout_s: float = 120.0, **kwargs: Any) -> None:
    """Run `fn(*args, **kwargs)` in a child that SIGKILLs itself at the fault point `fault`; fails if it never got
    there."""
    status = wait(fork_call(fn, *args, fault=fault, **kwargs), timeout_s)
    assert status == -signal.SIGKILL, f"the child was not killed at {fault!r} (exit status {status})"


def barrier(folder: Path, name: str, parties: int, timeout_s: float = 30.0) -> None:
    """Wait until `parties` processes have called barrier(folder, ...) (each touches a file): a race's start line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.glob(f"{name}.*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: fewer than {parties} processes arrived")
        time.sleep(0.01)
