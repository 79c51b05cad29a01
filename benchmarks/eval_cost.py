"""What evaluating one new SAE costs, with every default evaluation, with a cold and a warm model-pass cache.

One process, two `compare` calls on the same model, layer and preset:

1. **cold**: an empty model-pass cache (`ABSTOPK_MODEL_PASS_CACHE` pointed at a fresh folder): SAE A is evaluated
   with every default evaluation; every SAE-independent model pass runs and is stored.
2. **warm**: SAE B, a *new* SAE (other weights, so no result is reused), evaluated into fresh results with the
   cache of step 1: only the SAE-dependent work runs (what a second run or `compare` of a new SAE costs).

The model copy and the held-out activation cache come from the usual cache dir (`~/.cache/abstopk_eval`, built by
the main job); both phases load the model (its time is in `load_model_s`, and the first evaluation's time
otherwise). The SAEs are random AbsTopK SAEs of the preset's width (expansion x d_model, k of the model's spec)
unless `--saes A B` names two checkpoints (any `compare` format); timing is what is measured, not their scores.

    python benchmarks/eval_cost.py                       # gemma-3-270m layer 9, quick preset, every default eval
    python benchmarks/eval_cost.py --smoke               # seconds-to-minutes check: smoke preset, small options
    python benchmarks/eval_cost.py --saes A B --keep-passes DIR   # trained SAEs; keep the model-pass cache

Writes benchmarks/results/eval_cost.json (with `--smoke`: benchmarks/results/eval_cost_smoke.json unless `--out`):
per phase the wall time, the time of each evaluation, and the model-pass cache's reads and builds.

`--sae-bench` also times sae_bench's own sparse probing and TPP on SAE B in the same process, on the same texts,
splits and sizes (`sae_bench_reference.py` patches only its model-facing `get_dataset_activations`). sae_bench
runs the language model per SAE unless its saved activation artifacts are reused, so it gets two numbers: cold
(its token activations + its evaluation) and warm (its evaluation alone), each beside ours. Its core, absorption,
SCR, RAVEL and unlearning need a HookedTransformer and its hub datasets, which do not run offline: not compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time

# as in sae_bench_reference.py: sae_bench's jaxtyping annotations reject its own nested probe sizes; they are
# annotations only, and the switch is read when jaxtyping is first imported (abstopk_eval imports sae_bench)
os.environ.setdefault("JAXTYPING_DISABLE", "1")
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from abstopk_eval import compare, workflow
from abstopk_eval.config import get_preset
from abstopk_eval.evals import pooled
from abstopk_eval.evals.context import default_evals
from abstopk_eval.io import atomic_write_json, default_cache_dir
from abstopk_eval.models import pass_cache
from abstopk_eval.models.registry import get_model_spec
from abstopk_eval.provenance import package_versions, source_commit

RESULTS = Path(__file__).resolve().parent / "results"

SMOKE_EVALS = ["core", "scr", "sparse_probing", "tpp"]
SMOKE_OPTIONS = [
    'sparse_probing.dataset_names=["sentiment"]',
    "sparse_probing.train_per_class=20",
    "sparse_probing.test_per_class=10",
    "sparse_probing.min_per_class=10",
    "sparse_probing.context_length=32",
    "sparse_probing.k_values=[1,5]",
    "sparse_probing.n_bootstrap=100",
    'tpp.dataset_names=["language"]',
    "tpp.n_values=[2]",
    "scr.train_set_size=40",
    "scr.test_set_size=20",
    "scr.min_per_quadrant=10",
    "scr.n_values=[2]",
    "core.n_bootstrap=100",
]
"""The `--smoke` setting: the cheap evaluations with small sizes (the others need thousands of prompts)."""


def fail(message: str) -> None:
    """Bad input: one `error:` line and exit status 2, before any work."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def random_sae_file(path: Path, d_in: int, d_sae: int, k: int, seed: int) -> Path:
    """A random AbsTopK SAE as a plain safetensors checkpoint (a format `compare` reads)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    tensors = {
        "W_enc": w_dec.T.contiguous(),
        "W_dec": w_dec,
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in),
    }
    save_file(tensors, str(path), metadata={"activation": "abstopk", "k": str(k)})
    return path


class EvalTimer:
    """Times every evaluation `workflow.evaluate` runs (its registered run function, wrapped)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._get_eval = workflow.get_eval

    def __enter__(self) -> EvalTimer:
        def timed_get_eval(name: str):
            spec = self._get_eval(name)

            def run(ctx, saes, _run=spec.run, _name=spec.name):
                began = time.perf_counter()
                try:
                    return _run(ctx, saes)
                finally:
                    self.seconds[_name] = round(time.perf_counter() - began, 3)

            return dataclasses.replace(spec, run=run)

        workflow.get_eval = timed_get_eval
        return self

    def __exit__(self, *exc: Any) -> None:
        workflow.get_eval = self._get_eval


def phase(name: str, argv: list[str], passes_root: Path) -> dict[str, Any]:
    """One `compare` call with the model-pass cache at `passes_root`: wall time, per-evaluation times, cache counts."""
    pooled.clear_pooled_cache()  # each phase starts like a new process
    os.environ[pass_cache.ROOT_ENV] = str(passes_root)
    counts: list[pass_cache.PassCache] = []
    original_adapter = workflow.Session.adapter

    def adapter(session):  # notes the session's pass cache and the model's load time
        if session._adapter is None:
            began = time.perf_counter()
            ad = original_adapter.fget(session)
            load_s[0] = time.perf_counter() - began
            if ad.pass_cache is not None:
                counts.append(ad.pass_cache)
            return ad
        return original_adapter.fget(session)

    load_s = [0.0]
    workflow.Session.adapter = property(adapter)
    try:
        with EvalTimer() as timer:
            began = time.perf_counter()
            compare.compare(compare.build_parser().parse_args(argv))
            wall = time.perf_counter() - began
    finally:
        workflow.Session.adapter = original_adapter
    cache = counts[0] if counts else None
    out = {
        "wall_s": round(wall, 3),
        "load_model_s": round(load_s[0], 3),
        "eval_s": timer.seconds,
        "pass_cache": None
        if cache is None
        else {"entries_read": cache.hits, "entries_built": cache.builds, "corrupt_rebuilt": cache.rebuilt_corrupt},
    }
    print(f"{name}: {out['wall_s']:.1f} s (model load {out['load_model_s']:.1f} s) {timer.seconds}", flush=True)
    return out


def sae_bench_side(model: str, layer: int, sae_path: Path) -> dict[str, Any]:
    """Seconds of sae_bench's sparse probing and TPP for one SAE over our default datasets, cold and warm."""
    from sae_bench_reference import dataset_activations, sae_bench_sparse_probing, sae_bench_tpp

    from abstopk_eval.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from abstopk_eval.evals.tpp.eval_config import TppEvalConfig
    from abstopk_eval.models.adapter import ModelAdapter
    from abstopk_eval.models.loading import load_model
    from abstopk_eval.saes.formats import load_external

    spec = get_model_spec(model)
    adapter = ModelAdapter.from_loaded(load_model(spec.key))
    sae = load_external(sae_path, spec=spec, layer=layer).sae
    sp_cfg, tpp_cfg = SparseProbingEvalConfig(), TppEvalConfig()
    setup = {"sparse_probing": 0.0, "tpp": 0.0}
    run = {"sparse_probing": 0.0, "tpp": 0.0}
    with torch.no_grad():
        for name in dict.fromkeys([*sp_cfg.dataset_names, *tpp_cfg.dataset_names]):
            ds, train, test, acts_s = dataset_activations(adapter, layer, name, sp_cfg)
            if name in sp_cfg.dataset_names:
                setup["sparse_probing"] += acts_s
                began = time.perf_counter()
                sae_bench_sparse_probing(name, train, test, sae, sp_cfg.k_values, layer)
                run["sparse_probing"] += time.perf_counter() - began
            if name in tpp_cfg.dataset_names and len(ds.class_names) > 2:
                setup["tpp"] += acts_s
                began = time.perf_counter()
                sae_bench_tpp(name, train, test, sae, tpp_cfg.n_values, layer)
                run["tpp"] += time.perf_counter() - began
            print(f"sae_bench {name}: activations {acts_s:.1f} s, evaluations so far {run}", flush=True)
    return {name: {"cold_s": round(setup[name] + run[name], 3), "warm_s": round(run[name], 3)} for name in run}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--model-path", default=None, help="a local copy of the model (as `run --model-path`)")
    p.add_argument("--layer", type=int, default=None, help="default: the model's default layer")
    p.add_argument("--preset", default=None, help="held-out data of this preset (default quick; smoke with --smoke)")
    p.add_argument("--evals", nargs="+", default=None, help="default: every default evaluation (--smoke: a few)")
    p.add_argument("--saes", nargs=2, type=Path, default=None, metavar=("A", "B"), help="two checkpoints")
    p.add_argument("--cache-dir", type=Path, default=None, help="model copy and activation caches (default ~/.cache)")
    p.add_argument("--smoke", action="store_true", help="smoke preset, cheap evaluations, small options")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--sae-bench", action="store_true", help="also time sae_bench's sparse probing and TPP on SAE B")
    p.add_argument(
        "--keep-passes",
        type=Path,
        default=None,
        help="an empty (or absent) folder for the model-pass cache, kept after the run (default: a temporary one), "
        "so later `compare` calls can start warm (ABSTOPK_MODEL_PASS_CACHE=<folder>)",
    )
    args = p.parse_args()
    if args.sae_bench and (args.smoke or args.model_path is not None):
        fail("--sae-bench runs at the default sizes on a registry model (not with --smoke)")
    if args.keep_passes is not None and args.keep_passes.exists() and any(args.keep_passes.iterdir()):
        fail(f"--keep-passes {args.keep_passes} is not empty (the cold phase needs an empty model-pass cache)")
    if args.model_path is not None and args.saes is None:
        fail("give --saes with --model-path (the SAE width comes from the registry)")
    torch.manual_seed(0)
    code = source_commit()  # now: the tree may change on disk while the run goes on

    spec = get_model_spec(args.model) if args.model_path is None else None
    preset = args.preset or ("smoke" if args.smoke else "quick")
    evals = args.evals or (SMOKE_EVALS if args.smoke else default_evals())
    out_path = args.out or RESULTS / ("eval_cost_smoke.json" if args.smoke else "eval_cost.json")
    with tempfile.TemporaryDirectory(prefix="eval_cost-") as tmp_name:
        tmp = Path(tmp_name)
        if args.saes is None:
            d_sae = get_preset(preset).expansion * spec.d_model
            saes = [random_sae_file(tmp / f"sae_{s}.safetensors", spec.d_model, d_sae, spec.paper_k, s) for s in (1, 2)]
        else:
            saes = list(args.saes)
        common = ["--model", args.model, "--preset", preset, "--evals", *evals, "--no-report", "-q"]
        common += ["--runs-dir", str(tmp / "runs"), "--reports-dir", str(tmp / "reports")]
        if args.layer is not None:
            common += ["--layer", str(args.layer)]
        if args.model_path is not None:
            common += ["--model-path", args.model_path]
        if args.cache_dir is not None:
            common += ["--cache-dir", str(args.cache_dir)]
        if args.smoke:
            common += [a for opt in SMOKE_OPTIONS for a in ("--eval-option", opt)]
        passes = tmp / "model_passes"
        if args.keep_passes is not None:
            passes = args.keep_passes
        cold = phase("cold", [str(saes[0]), *common, "--results-dir", str(tmp / "results_cold")], passes)
        warm = phase("warm", [str(saes[1]), *common, "--results-dir", str(tmp / "results_warm")], passes)
        layer = args.layer if args.layer is not None else spec.default_layer if spec is not None else None
        ratio = {name: round(cold["eval_s"][name] / max(t, 1e-9), 2) for name, t in warm["eval_s"].items()}
        result = {
            "what": "time to evaluate one new SAE with the listed evaluations: cold = empty model-pass cache, "
            "warm = the cache a first SAE's evaluation left (a new SAE, fresh results)",
            "model": args.model,
            "layer": layer,
            "preset": preset,
            "evals": evals,
            "smoke": args.smoke,
            "eval_options": SMOKE_OPTIONS if args.smoke else [],
            "saes": [str(s) for s in args.saes] if args.saes else "random AbsTopK (seeds 1, 2)",
            "cache_dir": str(args.cache_dir or default_cache_dir()),
            "cold": cold,
            "warm": warm,
            "cold_over_warm_per_eval": ratio,
            "cold_over_warm_total": round(cold["wall_s"] / max(warm["wall_s"], 1e-9), 2),
            "sae_bench": None,
            "torch_threads": torch.get_num_threads(),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "versions": package_versions(),
            "source_commit": code,
        }
        atomic_write_json(out_path, result)  # before sae_bench's side: a failure there keeps what was measured
        print(f"wrote {out_path}: cold {cold['wall_s']:.1f} s, warm {warm['wall_s']:.1f} s")
        if args.sae_bench:
            theirs = sae_bench_side(args.model, layer, saes[1])
            result["sae_bench"] = {
                "what": "sae_bench's own code on SAE B, same texts, splits and sizes; cold = its LLM token activations "
                "+ its evaluation, warm = its evaluation with the activations given (its saved-artifact reuse)",
                "seconds": theirs,
                "sae_bench_over_ours": {
                    name: {
                        "cold": round(t["cold_s"] / max(cold["eval_s"][name], 1e-9), 2),
                        "warm": round(t["warm_s"] / max(warm["eval_s"][name], 1e-9), 2),
                    }
                    for name, t in theirs.items()
                    if name in warm["eval_s"]
                },
            }
            atomic_write_json(out_path, result)
            print(f"wrote {out_path} with sae_bench's side: {result['sae_bench']['sae_bench_over_ours']}")


if __name__ == "__main__":
    main()
