"""`python -m abstopk_eval.compare PATH [PATH ...]`: evaluate SAEs from disk next to the trained variants.

Each PATH is an SAE checkpoint in one of the formats of `abstopk_eval.saes.formats` (sae_lens folder, sae_bench
state dict, dictionary_learning ae.pt + config.json, or a plain safetensors file naming its activation). It is
checked against --model / --layer (declared model, layer and hook, and d_in), converted to an sae_lens SAE of
the matching architecture (AbsTopK families keep signed latents), written to
runs/<model>/layer_<L>/<name>/sae, evaluated with every registered evaluation (or --evals) on the same held-out
data as the trained variants of the same --preset, and its results land in the usual layout,
results/<model>/layer_<L>/<name>/<eval>.json, with the source path, detected format and source weights' sha256
in `provenance`. <name> is `ext-<folder or file name>` (or --name). The reports are then rebuilt, so the
checkpoints appear in the same tables as the trained variants. Rerunning skips checkpoints whose results are
current (same source weights).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abstopk_eval import evals as _evals  # noqa: F401  (registers the evaluations)
from abstopk_eval.config import PRESETS, get_preset
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.context import default_evals, get_eval
from abstopk_eval.io import atomic_directory, atomic_write_json, sha256_file
from abstopk_eval.models.registry import DEFAULT_MODEL, MODEL_REGISTRY, get_model_spec
from abstopk_eval.results import result_path
from abstopk_eval.saes.formats import ACTIVATIONS, ExternalSAE, default_name, load_external

log = logging.getLogger("abstopk_eval.compare")

SOURCE_JSON = "external.json"


@dataclass(frozen=True)
class ExternalJob:
    """What `workflow.evaluate_missing` needs of a job: a name and where its sae_lens checkpoint lies."""

    sae_id: str
    out_dir: Path

    @property
    def sae_dir(self) -> Path:
        return self.out_dir / "sae"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m abstopk_eval.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="SAE checkpoints (folders or files)")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model key ({', '.join(MODEL_REGISTRY)}); default %(default)s"
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="residual-stream layer the SAEs read; default: the model's default layer",
    )
    p.add_argument(
        "--evals", nargs="+", default=None, metavar="E", help="evaluations to run (default: every registered one)"
    )
    p.add_argument(
        "--activation", default=None, help=f"activation for checkpoints that do not name one ({', '.join(ACTIVATIONS)})"
    )
    p.add_argument("--k", type=int, default=None, help="k for k-sparse checkpoints that do not state it")
    p.add_argument("--name", default=None, help="result name for a single PATH (default ext-<folder or file name>)")
    p.add_argument(
        "--preset",
        default="quick",
        help=f"held-out data of this preset, as the trained variants used ({', '.join(PRESETS)})",
    )
    p.add_argument("--corpus", default="wiki-en", help="held-out text (as for `abstopk_eval.run`)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-path", default=None, help="load the model from this local folder")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where converted checkpoints are written")
    p.add_argument("--reports-dir", type=Path, default=Path("reports"))
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--no-report", action="store_true", help="do not regenerate reports/")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _write_checkpoint(ext: ExternalSAE, job: ExternalJob, spec_key: str, layer: int) -> None:
    """Save the converted SAE (sae_lens format) unless the same source weights were converted before."""
    record = {"name": job.sae_id, "model": spec_key, "layer": layer, **ext.provenance}
    marker = job.out_dir / SOURCE_JSON
    if marker.is_file() and (job.sae_dir / "sae_weights.safetensors").is_file():
        try:
            if json.loads(marker.read_text()) == json.loads(json.dumps(record, default=str)):
                return
        except (OSError, ValueError):
            pass
    sae = ext.sae
    metadata = {
        "model": spec_key,
        "layer": layer,
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "variant": job.sae_id,
        "k": ext.k,
        "seed": None,
        "preset": None,
        "sae_id": job.sae_id,
        "external": ext.provenance,
    }
    for key, value in metadata.items():
        sae.cfg.metadata[key] = value
    with atomic_directory(job.sae_dir) as staged:
        sae.save_model(staged)
    atomic_write_json(marker, record)


def _is_current(path: Path, digest: str) -> bool:
    try:
        return json.loads(path.read_text()).get("provenance", {}).get("sae_weights_sha256") == digest
    except (OSError, ValueError):
        return False


def _stamp_provenance(path: Path, ext: ExternalSAE) -> None:
    """Record the source checkpoint in a written result's provenance."""
    data = json.loads(path.read_text())
    prov = data.setdefault("provenance", {})
    prov.update(
        {
            "source_path": str(ext.source_path),
            "source_format": ext.format,
            "source_sha256": ext.sha256,
            "external": ext.provenance,
            "variant": prov.get("variant") or path.parent.name,
        }
    )
    atomic_write_json(path, data)


def compare(args: argparse.Namespace) -> dict[str, Path]:
    """Convert, evaluate and record every PATH; returns {result name: its results folder}."""
    from abstopk_eval import workflow
    from abstopk_eval.workflow import RunPlan

    spec = get_model_spec(args.model)
    layer = spec.check_layer(spec.default_layer if args.layer is None else args.layer)
    eval_names = [get_eval(e).name for e in dict.fromkeys(args.evals or default_evals())]
    if args.name and len(args.paths) > 1:
        raise UserError("--name applies to a single PATH")
    if args.k is not None and args.k <= 0:
        raise UserError("--k must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available")
    loaded: dict[str, ExternalSAE] = {}
    for path in args.paths:
        name = args.name or default_name(path)
        if not name.startswith("ext-"):
            name = f"ext-{name}"
        if name in loaded:
            raise UserError(
                f"{path} and {loaded[name].source_path} both map to the result name {name}; "
                "compare them in separate calls with --name"
            )
        loaded[name] = load_external(path, spec=spec, layer=layer, activation=args.activation, k=args.k)
        ext = loaded[name]
        log.info(
            "%s: %s checkpoint, %s (%s), d_sae %d%s",
            name,
            ext.format,
            ext.activation,
            ext.architecture,
            ext.sae.cfg.d_sae,
            ", signed latents" if ext.signed else "",
        )
    plan = RunPlan(
        model=spec,
        layer=layer,
        variants=[],
        ks=[spec.paper_k],
        seeds=[0],
        preset=get_preset(args.preset),
        evals=eval_names,
        corpus=args.corpus,
        device=args.device,
        model_path=args.model_path,
        results_dir=args.results_dir,
        runs_dir=args.runs_dir,
        reports_dir=args.reports_dir,
        cache_dir=args.cache_dir,
        write_report=not args.no_report,
    )
    jobs = {name: ExternalJob(name, args.runs_dir / spec.key / f"layer_{layer}" / name) for name in loaded}
    for name, job in jobs.items():
        _write_checkpoint(loaded[name], job, spec.key, layer)
    digests = {name: sha256_file(job.sae_dir / "sae_weights.safetensors") for name, job in jobs.items()}
    pending: dict[str, list[Any]] = {}
    for eval_name in eval_names:
        todo = [
            job
            for name, job in jobs.items()
            if not _is_current(result_path(args.results_dir, spec.key, layer, name, eval_name), digests[name])
        ]
        if todo:
            pending[eval_name] = todo
    if pending:
        workflow.evaluate_missing(workflow._Session(plan), pending)
        for eval_name, todo in pending.items():
            for job in todo:
                path = result_path(args.results_dir, spec.key, layer, job.sae_id, eval_name)
                if path.is_file():
                    _stamp_provenance(path, loaded[job.sae_id])
    else:
        log.info("every requested evaluation already has results for these checkpoints in %s", args.results_dir)
    if plan.write_report:
        from abstopk_eval.report import build_reports

        build_reports(args.results_dir, args.reports_dir)
    return {name: args.results_dir / spec.key / f"layer_{layer}" / name for name in loaded}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name, folder in compare(args).items():
        print(f"{name}\t{folder}")


if __name__ == "__main__":
    main()
