"""`python -m abstopk_eval.run`: train what is missing, run every registered evaluation, rebuild reports.

Defaults: the offline default model (gemma-3-270m), its middle layer, all six variants, the `quick`
preset, k from the model registry, seed 0, every registered evaluation. Rerunning skips finished work;
an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from abstopk_eval import evals as _evals  # noqa: F401  (registers the evaluations)
from abstopk_eval.config import PRESETS, get_preset
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.context import default_evals, get_eval
from abstopk_eval.models.registry import DEFAULT_MODEL, MODEL_REGISTRY, get_model_spec
from abstopk_eval.saes.variants import ALL_VARIANTS, get_variant
from abstopk_eval.workflow import RunPlan, execute

log = logging.getLogger("abstopk_eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m abstopk_eval.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model key ({', '.join(MODEL_REGISTRY)}); default %(default)s"
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="residual-stream layer (output of block L); default: the model's middle layer",
    )
    p.add_argument(
        "--model-path",
        default=None,
        help="load the model from this local folder (save_pretrained format) instead of its package or the hub",
    )
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
    p.add_argument("--preset", default="quick", help=f"training preset ({', '.join(PRESETS)}); default %(default)s")
    p.add_argument(
        "--evals",
        nargs="+",
        default=None,
        metavar="E",
        help="evaluations to run (default: every registered one except those asked for by name, e.g. steering)",
    )
    p.add_argument(
        "--corpus",
        default="wiki-en",
        help="training / held-out text (wiki-en, python-stdlib, mixed, or pile with network)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="checkpoints and trained SAEs (not in git)")
    p.add_argument("--reports-dir", type=Path, default=Path("reports"))
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model copies and activation caches (default ~/.cache/abstopk_eval or $ABSTOPK_EVAL_CACHE)",
    )
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
    p.add_argument("--no-report", action="store_true", help="do not regenerate reports/")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def plan_from_args(args: argparse.Namespace) -> RunPlan:
    spec = get_model_spec(args.model)
    layer = spec.check_layer(spec.default_layer if args.layer is None else args.layer)
    variants = [get_variant(v).name for v in dict.fromkeys(args.variants)]
    evals = [get_eval(e).name for e in dict.fromkeys(args.evals or default_evals())]
    ks = sorted(set(args.k or [spec.paper_k]))
    if any(k <= 0 for k in ks):
        raise UserError("--k values must be positive")
    if args.seeds <= 0:
        raise UserError("--seeds must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available")
    return RunPlan(
        model=spec,
        layer=layer,
        variants=variants,
        ks=ks,
        seeds=list(range(args.seeds)),
        preset=get_preset(args.preset),
        evals=evals,
        corpus=args.corpus,
        device=args.device,
        model_path=args.model_path,
        results_dir=args.results_dir,
        runs_dir=args.runs_dir,
        reports_dir=args.reports_dir,
        cache_dir=args.cache_dir,
        write_report=not args.no_report,
        sparse_training=not args.dense_training,
        bf16_training=args.bf16,
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    plan = plan_from_args(args)
    began = time.perf_counter()
    execute(plan)
    log.info("run finished in %.0fs", time.perf_counter() - began)


if __name__ == "__main__":
    main()
