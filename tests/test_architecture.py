"""The import graph of `abstopk_eval`, read from the source with `ast` (module- and function-level imports):
no cycle, and the reporting, results, evaluation, data, model and SAE layers never pull in training."""

from __future__ import annotations

import ast
import graphlib
from collections import deque
from pathlib import Path

import pytest

import abstopk_eval

PACKAGE = "abstopk_eval"
ROOT = Path(abstopk_eval.__file__).parent
TRAINING = f"{PACKAGE}.training"
WITHOUT_TRAINING = tuple(
    f"{PACKAGE}.{name}"
    for name in (
        # reporting
        "report",
        "paper_report",
        "columns",
        "bidirectional_figures",
        "intervals",
        "paper_values",
        # results and everything an evaluation of an existing SAE needs
        "results",
        "data",
        "evals",
        "models",
        "saes",
    )
)
"""Modules (and packages, with everything under them) that must not import `abstopk_eval.training`, directly or
transitively: evaluating or reporting on an SAE needs no training code."""
DIRECTLY_WITHOUT_TRAINING = (f"{PACKAGE}.compare",)
"""Commands that evaluate SAEs from disk: they reach training code only through `workflow`, the orchestrator, whose
evaluation entry point they call (workflow imports the trainer for `execute`); they import none themselves."""


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The module `name` refers to: itself, else its longest prefix that is a module of the package."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Modules of the package that `module` imports anywhere in its body (`from x import y` is the submodule
    x.y when there is one, else x)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {t for t in map(_resolve, targets) if t and t.startswith(PACKAGE) and t != module}
    return found


GRAPH = {module: _imports(module) for module in MODULES}
"""module -> the package's modules it names in an import."""


def _with_parent_packages(targets: set[str]) -> list[str]:
    """The named modules, then their parent packages: importing a.b.c runs a/__init__.py and a/b/__init__.py
    first, so they are imported too."""
    parents = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 1)}
    return sorted(targets) + sorted(parents - targets)


def _chain_to_training(start: str) -> list[str] | None:
    """A shortest import chain from `start` to a module of abstopk_eval.training, or None."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        if module == TRAINING or module.startswith(f"{TRAINING}."):
            chain = [module]
            while previous[chain[-1]] is not None:
                chain.append(previous[chain[-1]])
            return chain[::-1]
        for target in _with_parent_packages(GRAPH[module]):
            if target not in previous:
                previous[target] = module
                queue.append(target)
    return None


def test_the_graph_sees_function_level_and_submodule_imports():
    """The parser itself: report imports paper_report; compare imports workflow inside a function; `from
    abstopk_eval.evals.steering import steer` is the submodule, `from abstopk_eval.results import iter_results`
    the module."""
    assert f"{PACKAGE}.paper_report" in GRAPH[f"{PACKAGE}.report"]
    assert f"{PACKAGE}.workflow" in GRAPH[f"{PACKAGE}.compare"]
    assert f"{PACKAGE}.evals.steering.steer" in GRAPH[f"{PACKAGE}.evals.steering.main"]
    assert f"{PACKAGE}.results" in GRAPH[f"{PACKAGE}.report"]
    assert f"{PACKAGE}.evals.core.main" in GRAPH[f"{PACKAGE}.evals"]  # `from abstopk_eval.evals.core import main`


def test_no_import_cycle():
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_evaluation_and_reporting_never_import_training():
    guarded = [m for m in MODULES if any(m == g or m.startswith(f"{g}.") for g in WITHOUT_TRAINING)]
    assert len(guarded) > 30  # the packages above exist and were parsed
    offenders = {m: chain for m in guarded if (chain := _chain_to_training(m))}
    assert not offenders, "imports of abstopk_eval.training:\n" + "\n".join(
        " -> ".join(chain) for chain in offenders.values()
    )


def test_compare_imports_no_training_module_itself():
    for name in DIRECTLY_WITHOUT_TRAINING:
        direct = {m for m in GRAPH[name] if m == TRAINING or m.startswith(f"{TRAINING}.")}
        assert not direct, f"{name} imports {sorted(direct)}"
