"""bfloat16 language-model passes on CPU: the time they save and what they change, per metric (issue 18 item 4).

Evaluates the same trained SAEs twice with `python -m abstopk_eval.compare`, the language model computing in
float32 and in bfloat16 (`--llm-dtype`), each from its own cold cache folder (sharing only the model copy), so
both timings include every SAE-independent pass (held-out activations, probing residuals, clean log-probabilities).
For every report column (`abstopk_eval.columns.COLUMNS`) it records both values, the change, and the change
relative to the metric's 95% interval half-width in the float32 result where one exists: a change well inside
the interval does not move a comparison, one near it does (keep float32 there). Writes
benchmarks/results/bf16_passes.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bf16_passes.py runs/gemma-3-270m/layer_9/<sae>-<hash8>/sae ... \\
        [--preset reference] [--evals core sparse_probing ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from abstopk_eval.columns import COLUMNS
from abstopk_eval.io import atomic_write_json, default_cache_dir
from abstopk_eval.provenance import package_versions
from abstopk_eval.results import ResultKind, iter_results

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bf16_passes.json"
DTYPES = ("float32", "bfloat16")


def _cache_dir(work: Path, dtype: str) -> Path:
    """A cold cache folder for one dtype that shares the model copy (assembling it is not a pass under test)."""
    base = default_cache_dir()
    cache = work / dtype / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for shared in ("models", "packages"):
        if (base / shared).exists() and not (cache / shared).exists():
            (cache / shared).symlink_to(base / shared)
    return cache


def _evaluate(work: Path, dtype: str, args: argparse.Namespace) -> float:
    out = work / dtype
    cmd = [
        sys.executable,
        "-m",
        "abstopk_eval.compare",
        *map(str, args.saes),
        "--model",
        args.model,
        "--layer",
        str(args.layer),
        "--preset",
        args.preset,
        "--llm-dtype",
        dtype,
        "--cache-dir",
        str(_cache_dir(work, dtype)),
        "--results-dir",
        str(out / "results"),
        "--runs-dir",
        str(out / "runs"),
        "--reports-dir",
        str(out / "reports"),
        "--no-report",
        "-q",
    ]
    if args.evals:
        cmd += ["--evals", *args.evals]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def _values(results_dir: Path) -> dict[str, dict[str, dict]]:
    """{sae: {eval: result data}} of one dtype's run."""
    out: dict[str, dict[str, dict]] = {}
    for r in iter_results(results_dir, kind=ResultKind.SAE):
        if r.config_tag is None:
            out.setdefault(r.name, {})[r.eval_name] = r.data
    return out


def compare_metrics(fp32: dict[str, dict[str, dict]], bf16: dict[str, dict[str, dict]]) -> list[dict]:
    rows = []
    for sae in sorted(set(fp32) & set(bf16)):
        for col in COLUMNS:
            a, b = col.value(fp32[sae].get(col.eval)), col.value(bf16[sae].get(col.eval))
            if a is None or b is None:
                continue
            interval = col.interval(fp32[sae].get(col.eval))
            half = None if interval is None else (interval[1] - interval[0]) / 2
            rows.append(
                {
                    "sae": sae,
                    "metric": col.name,
                    "float32": a,
                    "bfloat16": b,
                    "change": b - a,
                    "relative_change": (b - a) / abs(a) if a else None,
                    "change_over_ci_half_width": (b - a) / half if half else None,
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("saes", nargs="+", type=Path, help="trained SAE folders (runs/.../<sae>-<hash8>/sae)")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--preset", default="reference")
    p.add_argument("--evals", nargs="+", default=None)
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bf16_passes_") as tmp:
        work = args.work_dir or Path(tmp)
        seconds = {dtype: _evaluate(work, dtype, args) for dtype in DTYPES}
        rows = compare_metrics(*(_values(work / dtype / "results") for dtype in DTYPES))
    ratios = [abs(r["change_over_ci_half_width"]) for r in rows if r["change_over_ci_half_width"] is not None]
    by_metric: dict[str, float] = {}
    for r in rows:
        if r["change_over_ci_half_width"] is not None:
            by_metric[r["metric"]] = max(by_metric.get(r["metric"], 0.0), abs(r["change_over_ci_half_width"]))
    result = {
        "setup": {
            "model": args.model,
            "layer": args.layer,
            "preset": args.preset,
            "saes": [str(s) for s in args.saes],
            "evals": args.evals or "default",
            "note": "each dtype from a cold model-pass and held-out cache; one run, so the ratio is paired",
        },
        "seconds": seconds,
        "bf16_over_fp32_time": seconds["bfloat16"] / seconds["float32"],
        "max_abs_change_over_ci_half_width_by_metric": by_metric,
        "max_abs_change_over_ci_half_width": max(ratios) if ratios else None,
        "metrics": rows,
        "versions": package_versions(),
    }
    atomic_write_json(OUT, result)
    print(f"float32 {seconds['float32']:.0f} s, bfloat16 {seconds['bfloat16']:.0f} s")
    for metric, worst in sorted(by_metric.items(), key=lambda kv: -kv[1]):
        print(f"  {metric}: largest |change| = {worst:.2f} x the 95% interval half-width")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
