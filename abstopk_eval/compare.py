"""`python -m abstopk_eval.compare PATH [PATH ...]`: evaluate SAEs from disk or published ones next to the trained
variants.

Each PATH is an SAE checkpoint in one of the formats of `abstopk_eval.saes.formats` (sae_lens folder, sae_bench
state dict, dictionary_learning ae.pt + config.json, EleutherAI sparsify folder, or a plain safetensors file
naming its activation). Published SAEs are named by sae_lens release and id (`--release R --sae-id ID`,
repeatable) or by regular expressions over sae_lens's pretrained-SAE directory (`--sae-regex-pattern` with
`--sae-block-pattern`, as SAEBench's flags: both must match fully) and load through `SAE.from_pretrained`
(`abstopk_eval.saes.published`; offline, from the Hugging Face cache). Each SAE is
checked against --model / --layer (declared model, layer and hook, and d_in), converted to an sae_lens SAE of
the matching architecture (AbsTopK families keep signed latents), written to
runs/<model>/layer_<L>/<name>/sae, evaluated with every registered evaluation (or --evals) on the same held-out
data as the trained variants of the same --preset, and its results land in the usual layout,
results/<model>/layer_<L>/<name>/<eval>.json, with the source path, detected format and source weights' sha256
in `provenance` (published SAEs: the release and id, also as sae_bench's `sae_lens_release_id` / `sae_lens_id`).
<name> is `ext-<folder or file name>`, `ext-<release>-<sae id>` for published SAEs (or --name). The reports are
then rebuilt, so the checkpoints appear in the same tables as the trained variants. Rerunning skips checkpoints
whose results are current (same source weights), unless --force-rerun.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from abstopk_eval import cli
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.identity import ExternalIdentity
from abstopk_eval.io import atomic_directory, atomic_write_json
from abstopk_eval.results import layer_dir
from abstopk_eval.saes import published
from abstopk_eval.saes.formats import ACTIVATIONS, FORMATS, ExternalSAE, default_name, load_external

log = logging.getLogger("abstopk_eval.compare")

SOURCE_JSON = "external.json"


@dataclass(frozen=True)
class ExternalJob:
    """A converted checkpoint's result name and run folder (runs/<model>/layer_<L>/<name>/sae holds it)."""

    sae_id: str
    out_dir: Path

    @property
    def sae_dir(self) -> Path:
        return self.out_dir / "sae"


def build_parser() -> argparse.ArgumentParser:
    p = cli.new_parser("python -m abstopk_eval.compare", __doc__, epilog=cli.registries_epilog(sae_formats=FORMATS))
    p.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help=f"SAE checkpoints (folders or files: {', '.join(FORMATS)})"
    )
    p.add_argument(
        "--release",
        action="append",
        default=[],
        metavar="R",
        help="sae_lens release of published SAEs (e.g. gpt2-small-res-jb); one for all --sae-id or one per id",
    )
    p.add_argument("--sae-id", action="append", default=[], metavar="ID", help="SAE id within --release; repeatable")
    p.add_argument(
        "--sae-regex-pattern",
        "--sae_regex_pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="releases of sae_lens's pretrained-SAE directory to take (full match, as SAEBench); repeatable, "
        "paired with --sae-block-pattern",
    )
    p.add_argument(
        "--sae-block-pattern",
        "--sae_block_pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="SAE ids within the matching releases (full match, e.g. 'blocks\\.8\\.hook_resid_pre')",
    )
    cli.add_model_arguments(p, layer_help="residual-stream layer the SAEs read")
    p.add_argument(
        "--activation", default=None, help=f"activation for checkpoints that do not name one ({', '.join(ACTIVATIONS)})"
    )
    p.add_argument("--k", type=int, default=None, help="k for k-sparse checkpoints that do not state it")
    p.add_argument("--name", default=None, help="result name for a single PATH (default ext-<folder or file name>)")
    cli.add_data_arguments(p, preset_help="held-out data of this preset, as the trained variants used")
    cli.add_eval_arguments(p)
    cli.add_runtime_arguments(p)
    cli.add_compute_arguments(p)
    cli.add_output_arguments(p, runs_help="where converted checkpoints are written")
    cli.add_logging_arguments(p)
    return p


CONVERSION_FIELDS = ("source_format", "activation", "architecture", "k", "decoder_norms_folded")
"""What, besides the source weights, decides the converted SAE."""


def external_identity(ext: ExternalSAE) -> ExternalIdentity:
    prov = ext.provenance
    return ExternalIdentity(source_sha256=ext.sha256, conversion={key: prov.get(key) for key in CONVERSION_FIELDS})


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


def compare(args: argparse.Namespace) -> dict[str, Path]:
    """Convert, evaluate and record every PATH; returns {result name: its results folder}."""
    from abstopk_eval import workflow

    shared = cli.shared_plan_fields(args)
    spec, layer = shared["model"], shared["layer"]
    refs = published.resolve(args.release, args.sae_id)
    refs += [ref for ref in published.select(args.sae_regex_pattern, args.sae_block_pattern) if ref not in refs]
    if not args.paths and not refs:
        raise UserError("nothing to compare: give checkpoint PATHs, --release with --sae-id, or --sae-regex-pattern")
    if args.name and len(args.paths) + len(refs) > 1:
        raise UserError("--name applies to a single SAE")
    if args.k is not None and args.k <= 0:
        raise UserError("--k must be positive")
    for ref in refs:  # before any download
        published.check_release_model(ref, spec)
    sources: list[tuple[str, Path | published.PublishedRef]] = [
        (args.name or default_name(path), path) for path in args.paths
    ]
    sources += [(args.name or ref.default_name(), ref) for ref in refs]
    loaded: dict[str, ExternalSAE] = {}
    for name, source in sources:
        if not name.startswith("ext-"):
            name = f"ext-{name}"
        if name in loaded:
            raise UserError(
                f"{source} and {loaded[name].source_path} both map to the result name {name}; "
                "compare them in separate calls with --name"
            )
        if isinstance(source, published.PublishedRef):
            loaded[name] = published.load_published(source, spec=spec, layer=layer)
        else:
            loaded[name] = load_external(source, spec=spec, layer=layer, activation=args.activation, k=args.k)
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
    # no SAE is trained: the plan only says which model, layer, held-out data and evaluations
    plan = workflow.RunPlan(**shared, variants=[], ks=[spec.paper_k], seeds=[0])
    session = workflow.Session(plan)
    targets = []
    for name, ext in loaded.items():
        identity = external_identity(ext)
        job = ExternalJob(name, workflow.sae_run_dir(plan, identity.folder(name)))
        _write_checkpoint(ext, job, spec.key, layer)
        folder = workflow.results_folder(name, identity.hash, session.ids.eval_data.hash)
        targets.append(workflow.EvalTarget(folder, job.sae_dir, identity=identity.record(), source=ext.provenance))
    workflow.evaluate(plan, targets, session)
    if plan.write_report:
        from abstopk_eval.report import build_reports

        build_reports(plan.results_dir, plan.reports_dir)
    return {t.sae_id: layer_dir(plan.results_dir, spec.key, layer) / t.sae_id for t in targets}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.quiet)
    for name, folder in compare(args).items():
        print(f"{name}\t{folder}")


if __name__ == "__main__":
    main()
