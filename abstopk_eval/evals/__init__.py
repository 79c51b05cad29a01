"""Evaluations; importing this package registers every built-in one in `EVALS`."""

from abstopk_eval.evals.core import main as _core  # noqa: F401
