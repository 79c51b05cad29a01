"""All six variants from one pass over the activation cache vs one at a time, and sparse vs dense kernels.

Same real gemma-3-270m layer-9 cache and `quick` preset shape as the default run (d_in 640, expansion 8,
batch 1,024), shortened to --steps steps. Three ways of training the same six SAEs, each timed end to end
(data loading included, checkpoints off):

- one_pass: `train_jobs` with all six jobs -> one sequential pass, each batch read once for all of them;
- separate: `train_jobs` once per variant -> six passes over the cache;
- separate_dense: as `separate` with sae_lens's dense forward/backward (the project before issue 3).

Each mode runs --repeats times, in a rotated order (the machine is noisy), and medians are reported. Also
timed: reading the batches alone (`load_only`, the stream every pass iterates, no training). Sharing the
batch stream can save at most (variants - 1) x load_only, so `one_pass_bound_over_separate` =
(separate - 5 x load_only) / separate is the best ratio one pass can reach without sharing compute.

The default run trains these six for the quick preset's 256 steps; `quick_run_training_s_estimate` scales
the measured seconds per step to that (an extrapolation, labelled as such). Writes
benchmarks/results/one_pass_training.json.

    .venv/bin/python benchmarks/one_pass_training.py [--steps 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_throughput import _cache  # same directory (scripts run as files)

from abstopk_eval.config import get_preset
from abstopk_eval.io import atomic_write_json
from abstopk_eval.models.registry import get_model_spec
from abstopk_eval.provenance import package_versions
from abstopk_eval.saes.variants import ALL_VARIANTS
from abstopk_eval.training.trainer import TrainJob, train_jobs

OUT = Path(__file__).parent / "results" / "one_pass_training.json"


def _train(variant_groups: list[list[str]], cache, preset, k: int, sparse: bool, bf16: bool = False) -> float:
    """Wall seconds to train every group, each group as one train_jobs call (one pass over the cache)."""

    def stream_for_seed(seed: int):
        return lambda start: cache.iter_batches(
            preset.batch_size, n_tokens=preset.train_tokens, seed=seed, start_token=start * preset.batch_size
        )

    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for group in variant_groups:
            jobs = [TrainJob(v, k, 0, preset.name, Path(tmp) / v) for v in group]
            train_jobs(
                jobs,
                stream_for_seed,
                d_in=cache.d_in,
                preset=preset,
                mean=cache.mean,
                scale=cache.scale,
                metadata={"benchmark": "one_pass_training"},
                sparse=sparse,
                bf16=bf16,
            )
    return time.perf_counter() - began


def _load_only(cache, preset) -> float:
    """Wall seconds to read one pass of training batches without training on them."""
    began = time.perf_counter()
    for batch in cache.iter_batches(preset.batch_size, n_tokens=preset.train_tokens, seed=0, start_token=0):
        batch.sum()  # touch the data, as a training step would
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    quick = get_preset("quick")
    preset = dataclasses.replace(quick, train_tokens=args.steps * quick.batch_size, checkpoint_every_steps=10**9)
    k = get_model_spec(args.model).paper_k
    train, _ = _cache(args.model, args.layer)
    variants = list(ALL_VARIANTS)
    modes = {
        "one_pass": ([variants], True),
        "separate": ([[v] for v in variants], True),
        "separate_dense": ([[v] for v in variants], False),
    }
    # warm-up (not timed): page in the cache file and the allocator for every variant's shapes
    _train([variants], train, dataclasses.replace(preset, train_tokens=2 * preset.batch_size), k, sparse=True)
    _train([variants], train, dataclasses.replace(preset, train_tokens=2 * preset.batch_size), k, sparse=False)
    runs: dict[str, list[float]] = {name: [] for name in [*modes, "load_only"]}
    names = list(modes)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            groups, sparse = modes[name]
            runs[name].append(_train(groups, train, preset, k, sparse))
            print(f"[{repeat}] {name}: {runs[name][-1]:.1f} s for {len(variants)} variants x {args.steps} steps")
        runs["load_only"].append(_load_only(train, preset))
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    per_step = {name: s / args.steps for name, s in seconds.items()}
    result = {
        "setup": {
            "model": args.model,
            "layer": args.layer,
            "variants": variants,
            "k": k,
            "steps": args.steps,
            "batch_size": preset.batch_size,
            "d_sae": preset.expansion * train.d_in,
            "threads": torch.get_num_threads(),
            "cache": str(train.directory),
            "repeats": args.repeats,
        },
        "seconds": seconds,
        "seconds_per_repeat": runs,
        "one_pass_over_separate": seconds["one_pass"] / seconds["separate"],
        "one_pass_over_separate_per_repeat": [a / b for a, b in zip(runs["one_pass"], runs["separate"], strict=True)],
        "load_only_fraction_of_separate": seconds["load_only"] / (seconds["separate"] / len(variants)),
        "one_pass_bound_over_separate": (seconds["separate"] - (len(variants) - 1) * seconds["load_only"])
        / seconds["separate"],
        "separate_dense_over_one_pass": seconds["separate_dense"] / seconds["one_pass"],
        "quick_run_training_s_estimate": {
            "note": f"extrapolation: measured seconds per step x the quick preset's {quick.total_steps} steps",
            **{name: s * quick.total_steps for name, s in per_step.items()},
        },
        "versions": package_versions(),
    }
    atomic_write_json(OUT, result)
    print(
        f"one pass / separate = {result['one_pass_over_separate']:.3f} (bound from shared loading "
        f"{result['one_pass_bound_over_separate']:.3f}); "
        f"dense separate / one pass = {result['separate_dense_over_one_pass']:.2f}; wrote {OUT}"
    )


if __name__ == "__main__":
    main()
