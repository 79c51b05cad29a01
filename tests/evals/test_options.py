"""`--eval-option NAME.KEY=VALUE`: parsed and typed by the evaluation's config, checked before any work, and
reaching the config every evaluation actually runs with."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

import abstopk_eval.evals  # noqa: F401  (registers the evaluations)
from abstopk_eval import run, sweep
from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EVALS, EvalContext
from abstopk_eval.evals.options import option_names, parse_eval_options

# one option per evaluation, with a value that differs from its default, as a user would type it
OPTION_PER_EVAL = {
    "core": ("n_bootstrap", "250", 250),
    "scr": ("probe_recipe", "sklearn", "sklearn"),
    "sparse_probing": ("k_values", "[1,3]", [1, 3]),
    "tpp": ("dataset_names", "language,topic", ["language", "topic"]),
    "absorption": ("max_k_value", "3", 3),
    "ravel": ("top_n_entities", "7", 7),
    "unlearning": ("random_seed", "5", 5),
    "fragmentation": ("threshold", "0.8", 0.8),
    "bidirectional": ("min_instances", "2", 2),
    "steering": ("sae_intervention", "add", "add"),
}


def test_every_registered_evaluation_is_covered_here():
    assert set(OPTION_PER_EVAL) == set(EVALS)
    for name, (key, _, _) in OPTION_PER_EVAL.items():
        assert key in option_names(EVALS[name].config_cls), (name, key)


class _Reached(Exception):
    def __init__(self, config):
        self.config = config


def _stub_context(eval_options) -> EvalContext:
    """Enough of a context for an evaluation to resolve its config (which each does before any model work)."""
    adapter = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=None, bos_token_id=None)
    return EvalContext(
        adapter=adapter,
        model_key="tiny",
        model_name="tiny",
        layer=1,
        eval_tokens=torch.zeros(2, 8, dtype=torch.long),
        heldout_activations=lambda: torch.zeros(4, 3),
        dataset="stub",
        eval_options=eval_options,
    )


@pytest.mark.parametrize("name", sorted(OPTION_PER_EVAL))
def test_an_eval_option_on_the_command_line_reaches_the_evaluations_config(name, monkeypatch):
    key, text, expected = OPTION_PER_EVAL[name]
    args = run.build_parser().parse_args(["--evals", name, "--eval-option", f"{name}.{key}={text}", "--no-report"])
    plan = run.plan_from_args(args)
    assert plan.eval_options == {name: {key: expected}}
    module = importlib.import_module(EVALS[name].run.__module__)
    real = module.resolve_config

    def capture(*a, **k):
        raise _Reached(real(*a, **k))

    monkeypatch.setattr(module, "resolve_config", capture)
    with pytest.raises(_Reached) as reached:
        EVALS[name].run(_stub_context(plan.eval_options), {})
    assert getattr(reached.value.config, key) == expected
    assert reached.value.config.model_name == "tiny" and reached.value.config.layer == 1


def test_values_are_typed_by_the_config():
    opts = parse_eval_options(["sparse_probing.k_values=2,4", "core.n_bootstrap=300", "tpp.n_values=[5]"])
    assert opts == {"sparse_probing": {"k_values": [2, 4]}, "core": {"n_bootstrap": 300}, "tpp": {"n_values": [5]}}
    assert parse_eval_options(["scr.probe_recipe=a", "scr.probe_recipe=sklearn"]) == {
        "scr": {"probe_recipe": "sklearn"}
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nope.k=1", "unknown evaluation 'nope'"),
        ("core.no_such_key=1", "unknown option core.no_such_key"),
        ("core.n_bootstrap=lots", "bad value for an option of core"),
        ("core.n_bootstrap=5", "bad value for an option of core"),  # ge=100
        ("core.layer=3", "core.layer is set by the run"),
        ("core.n_ce_tokens=3", "core.n_ce_tokens is set by the run"),
        ("steering.sae_intervention=shout", "unknown SAE steering method"),
        ("scr.probe_recipe", "NAME.KEY=VALUE"),
        ("probe_recipe=sklearn", "NAME.KEY=VALUE"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_work(item, message, capsys, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--eval-option", item, "--results-dir", str(out), "--runs-dir", str(out), "--reports-dir", str(out)])
    assert exit_info.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_sweep_specs_take_eval_options(tmp_path):
    spec = {
        "models": ["gemma-3-270m"],
        "variants": ["topk"],
        "evals": ["core"],
        "eval_options": {"core": {"n_bootstrap": 200}},
    }
    jobs = sweep.expand(spec)
    assert jobs and all(job.eval_options == {"core": {"n_bootstrap": 200}} for job in jobs)
    with pytest.raises(UserError, match="unknown option core.nope"):
        sweep.expand({**spec, "eval_options": {"core": {"nope": 1}}})


def test_every_option_readme_documents_parses():
    """README's `--eval-option NAME.KEY=VALUE` examples name real options with valid values."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = re.findall(r"--eval-option\s+'?([a-z_]+\.[a-z_]+=[^\s`']+)", readme)
    assert len(examples) >= 4
    for item in examples:
        name, _, _ = item.partition(".")
        assert name in parse_eval_options([item]), item
