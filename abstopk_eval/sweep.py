"""`python -m abstopk_eval.sweep SPEC [--shard i/n] [--list]`: a sweep as independent jobs, runnable in shards.

A sweep spec (YAML or JSON) lists models x layers x variants x k x seeds x evals. It expands into jobs of one
(model, layer, variant, k, seed) each, in a fixed order; `--shard i/n` runs jobs i, i+n, i+2n, ... (0 <= i < n),
so n processes (a SLURM array, any scheduler, several machines) together run every job exactly once. Each job
is the ordinary workflow (train what is missing, evaluate what has no current result; `RunPlan` / `execute`
with write_report=False) and writes only its own folders, results/<model>/layer_<L>/<sae_id>/ and
runs/<model>/layer_<L>/<sae_id>/, so shards share one results dir without collisions, and a rerun skips
finished work. Rebuild the reports once every shard is done: `python -m abstopk_eval.report --results-dir DIR`.

Spec keys (unknown keys are refused):

    models:   [gemma-3-270m]            # or entries {model: gpt2, layers: [6, 8], k: [76], model_path: /data/gpt2}
    layers:   default                   # default | paper | [6, 8] (per-model `layers` wins)
    variants: [topk, abstopk]           # default: all six
    k:        [32, 64]                  # default: the model's k
    seeds:    3                         # N (seeds 0..N-1) or a list; default 1
    evals:    [core]                    # default: every registered evaluation
    eval_options: {scr: {probe_recipe: sklearn}}   # as --eval-option scr.probe_recipe=sklearn
    datasets: canonical                 # as --datasets canonical (default offline; eval_options win)
    preset:   quick                     # also corpus, device, bf16, dense_training

SLURM array: `sbatch --array=0-7 --wrap 'python -m abstopk_eval.sweep sweep.yaml --shard $SLURM_ARRAY_TASK_ID/8
--results-dir /shared/results --runs-dir /shared/runs --cache-dir $TMPDIR/abstopk_cache'` (a node-local cache
dir: concurrent builds of one activation cache in a shared folder by several machines are not safe).
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

from abstopk_eval import cli
from abstopk_eval import evals as _evals  # noqa: F401  (registers the evaluations)
from abstopk_eval.config import get_preset
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.context import default_evals, get_eval, ordered_evals
from abstopk_eval.evals.options import check_eval_options, hub_needs, with_datasets
from abstopk_eval.models.loading import check_device
from abstopk_eval.models.registry import get_model_spec
from abstopk_eval.saes.variants import ALL_VARIANTS, get_variant, sae_id

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


def expand(spec: dict[str, Any]) -> list[SweepJob]:
    """Every job of the sweep, in a fixed order (models and variants as listed, then layer, k, seed)."""
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
    preset = get_preset(str(spec.get("preset", "quick"))).name
    shared = {
        "preset": preset,
        "evals": evals,
        "corpus": str(spec.get("corpus", "wiki-en")),
        "device": str(spec.get("device", "cpu")),
        "bf16": bool(spec.get("bf16", False)),
        "dense_training": bool(spec.get("dense_training", False)),
        "eval_options": with_datasets(
            str(spec.get("datasets", "offline")), evals, check_eval_options(spec.get("eval_options"))
        ),
    }
    check_device(shared["device"])
    hub_needs(evals, shared["eval_options"], check=True)
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
        model = get_model_spec(str(entry["model"]))
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
                            model=model.key,
                            layer=layer,
                            variant=variant,
                            k=k,
                            seed=seed,
                            model_path=entry.get("model_path"),
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


def run_job(job: SweepJob, *, results_dir: Path, runs_dir: Path, reports_dir: Path, cache_dir: Path | None) -> None:
    """Train and evaluate one job through the ordinary workflow (no report)."""
    from abstopk_eval.workflow import RunPlan, execute

    plan = RunPlan(
        model=get_model_spec(job.model),
        layer=job.layer,
        variants=[job.variant],
        ks=[job.k],
        seeds=[job.seed],
        preset=get_preset(job.preset),
        evals=list(job.evals),
        corpus=job.corpus,
        device=job.device,
        model_path=job.model_path,
        results_dir=results_dir,
        runs_dir=runs_dir,
        reports_dir=reports_dir,
        cache_dir=cache_dir,
        write_report=False,
        sparse_training=not job.dense_training,
        bf16_training=job.bf16,
        eval_options=job.eval_options,
    )
    execute(plan)


def build_parser() -> argparse.ArgumentParser:
    p = cli.new_parser("python -m abstopk_eval.sweep", __doc__)
    p.add_argument("spec", type=Path, help="sweep spec (.yaml / .yml / .json)")
    p.add_argument("--shard", default="0/1", help="run share i of n (0 <= i < n); default 0/1, the whole sweep")
    p.add_argument("--list", action="store_true", help="print the jobs (of this shard) and exit")
    cli.add_output_arguments(p, report_flag=False)
    cli.add_runtime_arguments(p, device=False)
    cli.add_logging_arguments(p)
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.quiet)
    index, count = parse_shard(args.shard)
    jobs = expand(load_spec_file(args.spec))
    mine = shard_jobs(jobs, index, count)
    if args.list:
        for position, job in enumerate(jobs):
            if position % count == index:
                print(f"{position}\t{position % count}/{count}\t{job.job_id}")
        return
    log.info("shard %d/%d: %d of %d jobs", index, count, len(mine), len(jobs))
    began = time.perf_counter()
    for number, job in enumerate(mine, 1):
        log.info("job %d/%d: %s", number, len(mine), job.job_id)
        run_job(
            job,
            results_dir=args.results_dir,
            runs_dir=args.runs_dir,
            reports_dir=args.reports_dir,
            cache_dir=args.cache_dir,
        )
    log.info("shard %d/%d finished %d jobs in %.0fs", index, count, len(mine), time.perf_counter() - began)


if __name__ == "__main__":
    main()
