"""Evaluations; importing this package registers every built-in one in `EVALS`.

The order of the imports below does not matter: `context.DEFAULT_ORDER` declares the order of a run.
"""

from abstopk_eval.evals.absorption import main as _absorption  # noqa: F401
from abstopk_eval.evals.bidirectional import main as _bidirectional  # noqa: F401
from abstopk_eval.evals.core import main as _core  # noqa: F401
from abstopk_eval.evals.fragmentation import main as _fragmentation  # noqa: F401
from abstopk_eval.evals.ravel import main as _ravel  # noqa: F401
from abstopk_eval.evals.scr import main as _scr  # noqa: F401
from abstopk_eval.evals.sparse_probing import main as _sparse_probing  # noqa: F401
from abstopk_eval.evals.steering import main as _steering  # noqa: F401
from abstopk_eval.evals.tpp import main as _tpp  # noqa: F401
from abstopk_eval.evals.unlearning import main as _unlearning  # noqa: F401
