"""Fault injection for the crash-safety tests: `ABSTOPK_FAULT=<point>[=<detail>][:<n>]` kills the process with SIGKILL
the n-th time (default the first) it reaches the named point (with that detail, e.g. ``atomic-write=core.json``).

Points: ``model-copy`` (a model copy built, not yet renamed into place), ``cache-build`` (an activation cache's
first batch written), ``train-step`` (after each training step), ``checkpoint-write`` (a checkpoint's tensors
written, its JSON not yet), ``eval-done`` (between evaluations: one evaluation's results written),
``atomic-write`` (any atomic file write, its temporary file written, not yet renamed). Unset (always, outside tests),
`point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "ABSTOPK_FAULT"
POINTS = ("model-copy", "cache-build", "train-step", "checkpoint-write", "eval-done", "atomic-write")
_hits: dict[str, int] = {}


def point(name: str, detail: str | None = None) -> None:
    """Kill this process (SIGKILL: no cleanup, no finally blocks) if `ABSTOPK_FAULT` asks for it at `name`."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    target, _, count = wanted.rpartition(":") if wanted.rpartition(":")[2].isdigit() else (wanted, "", "")
    if target not in (name, f"{name}={detail}"):
        return
    _hits[target] = _hits.get(target, 0) + 1
    if _hits[target] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
