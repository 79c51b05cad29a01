"""`python -m abstopk_eval.sweep SPEC`: a sweep run in stages, locally, in shards, or as chained SLURM arrays.

A sweep spec (YAML or JSON) lists models x layers x variants x k x seeds x evals. It expands into jobs of one
(model, layer, variant, k, seed) each, in a fixed order (`--list`), and the jobs of one (model, layer) form a
group (`--groups`). A group runs the stages of `workflow.STAGES`: cache (build its activation caches), train (all
its variants, k and seeds in one pass over the activations, one model load) and evaluate, through the ordinary
workflow (`RunPlan` / `execute`, write_report=False). Every job writes only its own folders,
results/<model>/layer_<L>/<sae_id>-<hash8>/ and runs/<model>/layer_<L>/<sae_id>-<hash8>/, so processes share one
results dir without collisions, and a rerun skips finished work.

- Locally (no --stage): every stage of every group, one group after another. `--shard i/n` takes jobs i, i+n, ...
  (0 <= i < n) and runs their groups, so n processes together run every job exactly once.
- `--stage cache|train|evaluate --group G`: one stage of group G (a SLURM array task).
- `--emit slurm DIR`: sbatch array scripts, one task per group, for cache -> train -> evaluate -> report, and
  DIR/submit.sh submitting them chained with `--dependency=afterok` (`abstopk_eval.slurm`). All stages share the
  `--cache-dir` (give a shared filesystem path): each (model, layer)'s caches are built by its one cache task.
- `--dry-run`: each group's plan and estimated cost (`abstopk_eval.dryrun`).

Rebuild the reports once every shard is done: `python -m abstopk_eval.report --results-dir DIR` (the emitted
report job does this).

Spec keys (unknown keys are refused):

    models:   [gemma-3-270m, Org/name]  # keys, hub ids, folders, or {model: gpt2, layers: [6], model_path: /data/gpt2}
    layers:   default                   # default | paper | [6, 8] (per-model `layers` wins)
    variants: [topk, abstopk]           # default: all six
    k:        [32, 64]                  # default: the model's k
    seeds:    3                         # N (seeds 0..N-1) or a list; default 1
    evals:    [core]                    # default: every registered evaluation
    eval_options: {scr: {probe_recipe: sklearn}}   # as --eval-option scr.probe_recipe=sklearn
    datasets: canonical                 # as --datasets canonical (default offline; eval_options win)
    preset:   quick                     # also corpus, device, bf16, dense_training, llm_dtype (auto), stream
                                        # (true / false; default: stream when the budget exceeds the cache),
                                        # epochs, allow_repeats, cache_dtype, as the flags of abstopk_eval.run
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abstopk_eval import cli, runtime
from abstopk_eval import evals as _evals  # noqa: F401  (registers the evaluations)
from abstopk_eval.config import get_preset
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.context import default_evals, get_eval, ordered_evals
from abstopk_eval.evals.options import check_eval_options, hub_needs, with_datasets
from abstopk_eval.models.loading import check_device, resolve_model
from abstopk_eval.models.registry import MODEL_REGISTRY, ModelSpec
from abstopk_eval.results import DEFAULT_PRESET_NAME
from abstopk_eval.saes.variants import ALL_VARIANTS, get_variant, sae_id
from abstopk_eval.workflow import STAGES

log = logging.getLogger("abstopk_eval.sweep")

SPEC_KEYS = {
    "datasets",
    "eval_options",
    "models",
    "layers",
    "variants",
    "k",
    "seeds",
    "evals",
    "preset",
    "corpus",
    "device",
    "bf16",
    "dense_training",
    "llm_dtype",
    "stream",
    "epochs",
    "allow_repeats",
    "cache_dtype",
}
MODEL_KEYS = {"model", "layers", "k", "model_path"}


@dataclass(frozen=True)
class SweepJob:
    """One (model, layer, variant, k, seed) of a sweep, plus the settings shared by the sweep."""

    model: str
    layer: int
    variant: str
    k: int
    seed: int
    preset: str
    evals: tuple[str, ...]
    corpus: str = "wiki-en"
    device: str = "cpu"
    model_path: str | None = None
    bf16: bool = False
    dense_training: bool = False
    llm_dtype: str = "auto"
    activation_source: str = "auto"
    """"auto", "cache" or "stream" (spec key `stream`: true / false / absent)."""
    epochs: int = 1
    allow_repeats: bool = False
    cache_dtype: str = "float32"
    eval_options: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)
    """eval name -> {option: value}, validated when the spec is expanded."""

    @property
    def sae_id(self) -> str:
        return sae_id(self.variant, self.k, self.seed, self.preset)

    @property
    def job_id(self) -> str:
        return f"{self.model}/layer_{self.layer}/{self.sae_id}"


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)):
        return [value]
    raise UserError(f"sweep spec: {what} must be a list")


def _ints(values: list[Any], what: str, minimum: int) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UserError(f"sweep spec: {what} must be integers >= {minimum} (got {v!r})")
        out.append(v)
    return out


def load_spec_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml / json syntax errors
        raise UserError(
            f"sweep spec {path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
            f"({err.__class__.__name__}: {str(err).splitlines()[0][:100]})"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"sweep spec {path} must be a mapping of keys ({', '.join(sorted(SPEC_KEYS))})")
    return data


def expand(spec: dict[str, Any], *, notes: list[str] | None = None) -> list[SweepJob]:
    """Every job of the sweep, in a fixed order (models and variants as listed, then layer, k, seed); with `notes`
    (a dry run, planning for another machine) a device this machine lacks is noted there instead of refused."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise UserError(
            f"sweep spec: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SPEC_KEYS))}"
        )
    models = _as_list(spec.get("models"), "models")
    if not models:
        raise UserError("sweep spec: `models` must list at least one model")
    variants = [
        get_variant(v).name for v in dict.fromkeys(_as_list(spec.get("variants"), "variants") or list(ALL_VARIANTS))
    ]
    named = [get_eval(e).name for e in _as_list(spec.get("evals"), "evals")]
    evals = tuple(ordered_evals(named) if named else default_evals())
    seeds_value = spec.get("seeds", 1)
    if isinstance(seeds_value, int) and not isinstance(seeds_value, bool):
        seeds = list(range(_ints([seeds_value], "seeds", 1)[0]))
    else:
        seeds = sorted(set(_ints(_as_list(seeds_value, "seeds"), "seeds", 0)))
    preset = get_preset(str(spec.get("preset", DEFAULT_PRESET_NAME))).name
    shared = {
        "preset": preset,
        "evals": evals,
        "corpus": cli.resolve_corpus(spec.get("corpus"), get_preset(preset)),
        "device": str(spec.get("device", "cpu")),
        "bf16": bool(spec.get("bf16", False)),
        "dense_training": bool(spec.get("dense_training", False)),
        "llm_dtype": str(spec.get("llm_dtype", "auto")),
        "activation_source": {None: "auto", True: "stream", False: "cache"}.get(spec.get("stream"), "bad"),
        "epochs": _ints([spec.get("epochs", 1)], "epochs", 1)[0],
        "allow_repeats": bool(spec.get("allow_repeats", False)),
        "cache_dtype": str(spec.get("cache_dtype", "float32")),
        "eval_options": with_datasets(
            str(spec.get("datasets", "offline")), evals, check_eval_options(spec.get("eval_options"))
        ),
    }
    if shared["activation_source"] == "bad":
        raise UserError("sweep spec: stream must be true or false")
    for key, choices in (("llm_dtype", runtime.LLM_DTYPES), ("cache_dtype", runtime.CACHE_DTYPES)):
        if shared[key] not in choices:
            raise UserError(f"sweep spec: {key} must be one of {', '.join(choices)} (got {shared[key]!r})")
    runtime.planned_source(
        shared["activation_source"],
        get_preset(preset),
        epochs=shared["epochs"],
        allow_repeats=shared["allow_repeats"],
    )
    cli.check_or_note(notes, check_device, shared["device"])
    cli.check_or_note(notes, hub_needs, evals, shared["eval_options"], check=True)
    jobs: list[SweepJob] = []
    seen: set[str] = set()
    for entry in models:
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise UserError(f"sweep spec: a `models` entry must be a name or a mapping with `model` (got {entry!r})")
        bad = set(entry) - MODEL_KEYS
        if bad:
            raise UserError(f"sweep spec: unknown key(s) {', '.join(sorted(bad))} in the entry for {entry['model']}")
        model, model_path = resolve_model(str(entry["model"]), entry.get("model_path"))  # key, hub id or folder
        layers_value = entry.get("layers", spec.get("layers", "default"))
        if layers_value == "default":
            layers = [model.default_layer]
        elif layers_value == "paper":
            layers = list(model.paper_layers) or [model.default_layer]
        else:
            layers = [model.check_layer(layer) for layer in _ints(_as_list(layers_value, "layers"), "layers", 0)]
        ks = sorted(set(_ints(_as_list(entry.get("k", spec.get("k")), "k"), "k", 1))) or [model.paper_k]
        for layer in dict.fromkeys(layers):
            for variant in variants:
                # variants without k train once per seed, with the smallest k (as `abstopk_eval.run` does)
                for k in ks if get_variant(variant).uses_k else ks[:1]:
                    for seed in seeds:
                        job = SweepJob(
                            model=model.key if model.key in MODEL_REGISTRY else str(entry["model"]),
                            layer=layer,
                            variant=variant,
                            k=k,
                            seed=seed,
                            model_path=model_path,
                            **shared,
                        )
                        if job.job_id not in seen:
                            seen.add(job.job_id)
                            jobs.append(job)
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n (SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UserError(f"--shard {text!r} must be i/n with integers 0 <= i < n, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UserError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return index, count


def shard_jobs(jobs: list[SweepJob], index: int, count: int) -> list[SweepJob]:
    """Round-robin share: jobs index, index + count, ... (balanced, deterministic)."""
    return jobs[index::count]


def _job_model(job: SweepJob) -> ModelSpec:
    """The job's model spec: its registry entry, else resolved again from its folder (or hub id + folder)."""
    if job.model in MODEL_REGISTRY:
        return MODEL_REGISTRY[job.model]
    return resolve_model(job.model, job.model_path)[0]


@dataclass(frozen=True)
class SweepGroup:
    """The jobs of one (model, layer): one stage job each trains all of them in one pass, or evaluates them."""

    jobs: tuple[SweepJob, ...]

    @property
    def name(self) -> str:
        return f"{self.jobs[0].model}/layer_{self.jobs[0].layer}"


def group_jobs(jobs: list[SweepJob]) -> list[SweepGroup]:
    """Jobs grouped by (model, layer, model_path), in the order groups first appear."""
    groups: dict[tuple[str, int, str | None], list[SweepJob]] = {}
    for job in jobs:
        groups.setdefault((job.model, job.layer, job.model_path), []).append(job)
    return [SweepGroup(tuple(group)) for group in groups.values()]


@dataclass(frozen=True)
class OutputDirs:
    results_dir: Path
    runs_dir: Path
    reports_dir: Path
    cache_dir: Path | None


def group_plan(group: SweepGroup, dirs: OutputDirs):
    """The `RunPlan` of a group: its variants x k x seeds, restricted to the group's own SAEs."""
    from abstopk_eval.workflow import RunPlan

    first = group.jobs[0]
    preset = get_preset(first.preset)
    return RunPlan(
        model=_job_model(first),
        layer=first.layer,
        variants=list(dict.fromkeys(job.variant for job in group.jobs)),
        ks=sorted({job.k for job in group.jobs}),
        seeds=sorted({job.seed for job in group.jobs}),
        preset=preset,
        evals=list(first.evals),
        corpus=first.corpus,
        device=first.device,
        model_path=first.model_path,
        results_dir=dirs.results_dir,
        runs_dir=dirs.runs_dir,
        reports_dir=dirs.reports_dir,
        cache_dir=dirs.cache_dir,
        write_report=False,
        sparse_training=not first.dense_training,
        bf16_training=first.bf16,
        eval_options=first.eval_options,
        llm_dtype=runtime.resolve_llm_dtype(first.llm_dtype, first.device),
        tf32=runtime.tf32_enabled(first.device),
        activation_source=runtime.planned_source(
            first.activation_source, preset, epochs=first.epochs, allow_repeats=True
        ),
        epochs=first.epochs,
        allow_repeats=first.allow_repeats,
        cache_dtype=first.cache_dtype,
        sae_ids=frozenset(job.sae_id for job in group.jobs),
    )


def run_group(group: SweepGroup, dirs: OutputDirs, stages: tuple[str, ...] = STAGES) -> None:
    """Run `stages` of one group through the ordinary workflow (no report)."""
    from abstopk_eval.workflow import execute

    execute(group_plan(group, dirs), stages)


def build_parser() -> argparse.ArgumentParser:
    p = cli.new_parser("python -m abstopk_eval.sweep", __doc__)
    p.add_argument("spec", type=Path, help="sweep spec (.yaml / .yml / .json)")
    p.add_argument("--shard", default="0/1", help="run share i of n (0 <= i < n); default 0/1, the whole sweep")
    p.add_argument("--list", action="store_true", help="print the jobs (of this shard) and exit")
    p.add_argument("--groups", action="store_true", help="print the (model, layer) groups the stages run, and exit")
    p.add_argument(
        "--stage",
        choices=(*STAGES, "all"),
        default=None,
        help="run one stage of one group (--group; a SLURM array task) instead of every stage of this shard",
    )
    p.add_argument("--group", type=int, default=None, help="with --stage: the group's index (see --groups)")
    p.add_argument(
        "--emit",
        nargs=2,
        metavar=("slurm", "DIR"),
        default=None,
        help="write sbatch array scripts for the stages cache -> train -> evaluate -> report into DIR, chained by "
        "submit.sh with --dependency=afterok, and exit",
    )
    p.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="with --emit: an extra #SBATCH line, e.g. partition=gpu or time=24:00:00 (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print each group's plan and estimated cost, and exit")
    cli.add_output_arguments(p, report_flag=False)
    cli.add_runtime_arguments(p, device=False)
    cli.add_logging_arguments(p)
    return p


def _dirs(args: argparse.Namespace) -> OutputDirs:
    return OutputDirs(args.results_dir, args.runs_dir, args.reports_dir, args.cache_dir)


def _emit(args: argparse.Namespace, groups: list[SweepGroup]) -> None:
    kind, out = args.emit
    if kind != "slurm":
        raise UserError(f"--emit {kind}: only slurm is supported")
    from abstopk_eval import slurm

    dirs = {"--results-dir": args.results_dir, "--runs-dir": args.runs_dir, "--reports-dir": args.reports_dir,
            "--cache-dir": args.cache_dir}  # fmt: skip
    gpu = any(runtime.on_cuda(group.jobs[0].device) for group in groups)
    for path in slurm.write_scripts(Path(out), args.spec, len(groups), dirs, gpu=gpu, options=args.slurm_option):
        print(path)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.quiet)
    index, count = parse_shard(args.shard)
    notes: list[str] = []
    jobs = expand(load_spec_file(args.spec), notes=notes if args.dry_run else None)
    groups = group_jobs(jobs)
    mine = shard_jobs(jobs, index, count)
    if args.list:
        for position, job in enumerate(jobs):
            if position % count == index:
                print(f"{position}\t{position % count}/{count}\t{job.job_id}")
        return
    if args.groups:
        for position, group in enumerate(groups):
            print(f"{position}\t{group.name}\t{len(group.jobs)} SAEs")
        return
    if args.emit is not None:
        _emit(args, groups)
        return
    if args.dry_run:
        from abstopk_eval.dryrun import format_plan

        print("\n\n".join(format_plan(group_plan(group, _dirs(args)), notes=notes) for group in groups))
        return
    if args.stage is not None:
        if args.group is None or not 0 <= args.group < len(groups):
            raise UserError(f"--stage needs --group between 0 and {len(groups) - 1} (see --groups)")
        group = groups[args.group]
        log.info("stage %s of group %d/%d: %s", args.stage, args.group, len(groups), group.name)
        run_group(group, _dirs(args), STAGES if args.stage == "all" else (args.stage,))
        return
    log.info("shard %d/%d: %d of %d jobs", index, count, len(mine), len(jobs))
    began = time.perf_counter()
    for number, group in enumerate(group_jobs(mine), 1):  # the stages of each (model, layer): one model load
        log.info("group %d: %s (%d SAEs)", number, group.name, len(group.jobs))
        run_group(group, _dirs(args))
    log.info("shard %d/%d finished %d jobs in %.0fs", index, count, len(mine), time.perf_counter() - began)


if __name__ == "__main__":
    main()
