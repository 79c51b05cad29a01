"""`python -m abstopk_eval.run`: train what is missing, run every registered evaluation, rebuild reports.

Defaults: the offline default model (gemma-3-270m), its middle layer, all six variants, the `quick`
preset, k from the model registry, seed 0, every registered evaluation. Rerunning skips finished work;
an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import time

from abstopk_eval import cli, runtime
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.saes.variants import ALL_VARIANTS, get_variant
from abstopk_eval.tracking import require_wandb
from abstopk_eval.workflow import RunPlan, execute

log = logging.getLogger("abstopk_eval")


def build_parser() -> argparse.ArgumentParser:
    p = cli.new_parser("python -m abstopk_eval.run", __doc__, epilog=cli.registries_epilog())
    cli.add_model_arguments(p)
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(ALL_VARIANTS),
        metavar="V",
        help=f"SAE variants to train/evaluate ({', '.join(ALL_VARIANTS)}); default all",
    )
    p.add_argument(
        "--k",
        nargs="+",
        type=int,
        default=None,
        help="k for the k-sparse variants; several values give the paper's k sweep; default from the model registry",
    )
    p.add_argument("--seeds", type=int, default=1, help="number of seeds per variant (seeds 0..N-1); default 1")
    cli.add_data_arguments(p)
    cli.add_activation_arguments(p)
    cli.add_eval_arguments(p)
    cli.add_runtime_arguments(p)
    cli.add_compute_arguments(p)
    cli.add_output_arguments(p)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="train with the encoder matmul in bf16 (autocast on the dense path); for GPUs: slower than fp32 on CPUs "
        "without AMX",
    )
    p.add_argument(
        "--dense-training",
        action="store_true",
        help="train every variant with sae_lens's dense forward/backward instead of the sparse kernels (same math, "
        "slower)",
    )
    p.add_argument(
        "--wandb",
        default=None,
        metavar="PROJECT",
        help="log the training curves of the SAEs this run trains to this Weights & Biases project (needs wandb; "
        "off by default)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (SAEs, evaluations, tokens, disk, memory and time per stage, estimated from the "
        "model's shapes) and exit without loading anything large",
    )
    cli.add_logging_arguments(p)
    return p


def plan_from_args(args: argparse.Namespace, *, notes: list[str] | None = None) -> RunPlan:
    """The checked plan; with `notes` (a dry run) what this machine lacks, or a run that would repeat its data too
    often, is noted there instead of refused."""
    shared = cli.shared_plan_fields(args, notes=notes)
    preset = shared["preset"]
    source = runtime.planned_source(
        args.activation_source, preset, epochs=args.epochs, allow_repeats=args.allow_repeats, notes=notes
    )
    variants = [get_variant(v).name for v in dict.fromkeys(args.variants)]
    ks = sorted(set(args.k or [shared["model"].paper_k]))
    d_sae = shared["preset"].expansion * shared["model"].d_model
    if any(k <= 0 for k in ks):
        raise UserError("--k values must be positive")
    if any(k > d_sae for k in ks):
        raise UserError(
            f"--k {max(ks)} exceeds the SAE width d_sae = {d_sae} ({shared['preset'].name} preset: "
            f"{shared['preset'].expansion} x d_model {shared['model'].d_model})"
        )
    if args.seeds <= 0:
        raise UserError("--seeds must be at least 1")
    require_wandb(getattr(args, "wandb", None))
    return RunPlan(
        **shared,
        variants=variants,
        ks=ks,
        seeds=list(range(args.seeds)),
        sparse_training=not args.dense_training,
        bf16_training=args.bf16,
        wandb_project=getattr(args, "wandb", None),
        activation_source=source,
        epochs=args.epochs,
        allow_repeats=args.allow_repeats,
        cache_dtype=args.cache_dtype,
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.quiet)
    if args.dry_run:
        from abstopk_eval.dryrun import format_plan

        notes: list[str] = []
        print(format_plan(plan_from_args(args, notes=notes), notes=notes))
        return
    plan = plan_from_args(args)
    began = time.perf_counter()
    execute(plan)
    log.info("run finished in %.0fs", time.perf_counter() - began)


if __name__ == "__main__":
    main()
