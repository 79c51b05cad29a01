"""benchmarks/bf16_passes.py compares two dtypes' results metric by metric, against the float32 interval."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_passes.py"


def _load():
    spec = importlib.util.spec_from_file_location("bf16_passes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _core(fvu: float, low: float, high: float) -> dict:
    return {
        "eval_result_metrics": {
            "normalised_reconstruction": {"fvu": fvu},
            "bootstrap_ci95": {"fvu_low": low, "fvu_high": high},
        }
    }


def test_changes_are_measured_against_the_float32_interval():
    bench = _load()
    fp32 = {"topk": {"core": _core(0.10, 0.09, 0.11)}, "only_fp32": {"core": _core(0.2, 0.1, 0.3)}}
    bf16 = {"topk": {"core": _core(0.105, 0.0, 1.0)}}
    (row,) = bench.compare_metrics(fp32, bf16)
    assert row["sae"] == "topk" and row["metric"] == "FVU"
    assert abs(row["change"] - 0.005) < 1e-12 and abs(row["change_over_ci_half_width"] - 0.5) < 1e-9
    assert abs(row["relative_change"] - 0.05) < 1e-9
