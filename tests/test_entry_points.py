"""Console scripts resolve to the same `main` functions as the `python -m` forms, and `--help` lists what the
registries hold (evaluations, corpora, SAE formats), so the lists cannot go stale."""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest

from abstopk_eval import compare, run
from abstopk_eval.data.corpus import CORPUS_REGISTRY
from abstopk_eval.evals.context import EVALS
from abstopk_eval.saes.formats import FORMATS

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SCRIPTS = {"abstopk-run", "abstopk-compare", "abstopk-report", "abstopk-export"}


def _declared() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_console_scripts_resolve_to_the_modules_mains():
    declared = _declared()
    assert set(declared) >= SCRIPTS
    for name, target in declared.items():
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), name
        assert 'if __name__ == "__main__":' in Path(module.__file__).read_text(), f"{module_name} has no -m form"
    # where the installed metadata already has them (an install of this tree), they are the same entry points
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    for name in SCRIPTS & set(installed):
        assert installed[name] == declared[name]


@pytest.mark.parametrize("module", [run, compare])
def test_help_lists_evaluations_corpora_and_formats(module, capsys):
    import abstopk_eval.evals  # noqa: F401

    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    for name in [*EVALS, *CORPUS_REGISTRY]:
        assert f"  {name}" in text, name
    assert "steering *" in text  # asked for by name only
    if module is compare:
        assert all(f"  {fmt}\n" in text for fmt in FORMATS) and "--sae-regex-pattern" in text
        assert "sparsify" in FORMATS
