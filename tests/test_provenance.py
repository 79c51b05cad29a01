"""Benchmarks record the commit of the code they measured."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from abstopk_eval.provenance import source_commit

ROOT = Path(__file__).resolve().parent.parent


def test_source_commit_is_this_checkouts_head_marked_dirty_when_it_has_changes():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    got = source_commit()
    assert got is not None and re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", got)
    assert got.split("+")[0] == head.stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    assert got.endswith("+dirty") == bool(status.stdout.strip())
