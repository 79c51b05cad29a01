"""Training throughput: this project's trainer vs sae_lens's SAETrainer vs the bare encoder matmul.

One process, one run, the same cached activations (real gemma-3-270m layer-9 activations from the
default quick cache): d_in 640, expansion 16 (10,240 latents), k 64, batch 4,096, Adam 3e-4 betas
(0.9, 0.99), constant LR. Both trainers start from identical weights and see identical batches, so their
final nMSE should agree up to float noise. Also trains ours with `--bf16` (encoder matmul in bf16) on the
same batches and reports its speed and nMSE against fp32: the accuracy check of that option.
Prints a table and writes benchmarks/results/train_throughput.json.

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--variants topk abstopk]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from abstopk_eval.config import get_preset
from abstopk_eval.data.activation_cache import ActivationCache, CacheKey
from abstopk_eval.io import atomic_write_json, default_cache_dir
from abstopk_eval.provenance import package_versions
from abstopk_eval.saes.variants import SparsityHyperparams, get_variant
from abstopk_eval.training.trainer import TrainJob, _new_state, _train_step

OUT = Path(__file__).parent / "results" / "train_throughput.json"


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms from /proc/self/statm."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_above_start_mb = (self.peak - self.start) / 2**20


def _cache(model: str, layer: int) -> tuple[ActivationCache, ActivationCache]:
    quick = get_preset("quick")
    root = default_cache_dir() / "activations"

    def folder(key: CacheKey) -> Path:
        # the main job's folder ends in -<source hash> (model weights identity, corpus version); take the one there
        found = sorted(root.glob(key.dirname + "-*"))
        if len(found) != 1:
            raise SystemExit(f"error: expected one activation cache {root / key.dirname}-*, found {len(found)}")
        return found[0]

    train = ActivationCache.load(folder(CacheKey(model, layer, "wiki-en", quick.cache_tokens, 128)), verify=False)
    held = ActivationCache.load(
        folder(CacheKey(model, layer, "wiki-en", quick.heldout_tokens, 128, split="eval")), verify=False
    )
    return train, held


def _build(variant: str, d_in: int, d_sae: int, k: int, seed: int):
    torch.manual_seed(seed)
    return get_variant(variant).build(d_in, d_sae, SparsityHyperparams(k=k, l1_coefficient=0.0, l0_coefficient=0.0))


@torch.no_grad()
def _nmse(sae, x: torch.Tensor) -> float:
    sae.eval()
    x_hat = sae.decode(sae.encode(x))
    return float((x_hat - x).pow(2).sum() / x.pow(2).sum())


def bench_ours(variant, batches, d_in, d_sae, k, preset, sparse=True, bf16=False) -> tuple[dict, object]:
    preset = dataclasses.replace(preset, expansion=d_sae // d_in)
    state = _new_state(
        TrainJob(variant, k, 0, preset.name, Path("/nonexistent")), d_in, preset, "cpu"
    )  # same init as _build(seed=0)
    sae = state.sae
    times = []
    with PeakRSS() as mem:
        for batch in batches:
            began = time.perf_counter()
            _train_step(state, batch, preset, sparse=sparse, bf16=bf16)
            times.append(time.perf_counter() - began)
    steady = times[1:]  # first step includes allocator warm-up
    return {
        "tokens_per_s": len(steady) * batches[0].shape[0] / sum(steady),
        "peak_mem_mb": mem.peak_above_start_mb,
    }, sae


def step_breakdown(variant, batches, d_in, d_sae, k, preset, top: int = 8) -> dict[str, float]:
    """Share of one training step's CPU time per operator (torch.profiler self time), over the given batches.

    Says where the gap to the encoder-matmul roofline goes: `aten::addmm` is the encoder product itself.
    """
    preset = dataclasses.replace(preset, expansion=d_sae // d_in)
    state = _new_state(TrainJob(variant, k, 0, preset.name, Path("/nonexistent")), d_in, preset, "cpu")
    _train_step(state, batches[0], preset)  # warm-up, not profiled
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches[1:]:
            _train_step(state, batch, preset)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    events.sort(key=lambda kv: -kv[1])
    shares = {key: round(t / total, 4) for key, t in events[:top]}
    shares["other"] = round(1 - sum(shares.values()), 4)
    return shares


def bench_sae_lens(variant, batches, d_in, d_sae, k, preset) -> tuple[dict, object]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = _build(variant, d_in, d_sae, k, seed=0)
    bs = batches[0].shape[0]
    cfg = SAETrainerConfig(
        total_training_samples=len(batches) * bs,
        train_batch_size_samples=bs,
        lr=preset.lr,
        lr_end=preset.lr,
        adam_beta1=preset.betas[0],
        adam_beta2=preset.betas[1],
        dead_feature_window=preset.dead_window_steps(),
        logger=LoggingConfig(log_to_wandb=False),
    )
    stamps: list[float] = []

    def provider():
        for batch in batches:
            stamps.append(time.perf_counter())  # SAETrainer asks for a batch at the start of each step
            yield batch

    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider())
    with PeakRSS() as mem:
        trainer.fit()
    # step i lasts from request i to request i+1; drop step 0 (warm-up), as for ours
    steps = np.diff(stamps)[1:]
    return {"tokens_per_s": len(steps) * bs / sum(steps), "peak_mem_mb": mem.peak_above_start_mb}, sae


def bench_roofline(batch: torch.Tensor, d_sae: int, repeats: int = 10) -> dict:
    """The bare encoder matmul [B, d] @ [d, d_sae], into a preallocated output (its best case on CPU;
    a freshly allocated output is also timed: page faults make it slower)."""
    W = torch.randn(batch.shape[1], d_sae) * 0.01
    out = torch.mm(batch, W)
    timings = {}
    for name, fn in (
        ("preallocated", lambda: torch.mm(batch, W, out=out)),
        ("fresh_output", lambda: torch.mm(batch, W)),
    ):
        fn()
        began = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings[name] = (time.perf_counter() - began) / repeats
    flops = 2 * batch.shape[0] * batch.shape[1] * d_sae
    per = timings["preallocated"]
    return {
        "tokens_per_s": batch.shape[0] / per,
        "gflops": flops / per / 1e9,
        "tokens_per_s_fresh_output": batch.shape[0] / timings["fresh_output"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--variants", nargs="+", default=["topk", "abstopk"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16-encoder accuracy/speed check")
    args = p.parse_args()
    torch.manual_seed(0)
    train, held = _cache(args.model, args.layer)
    d_in, d_sae = train.d_in, args.expansion * train.d_in
    batches = list(train.iter_batches(args.batch_size, n_tokens=args.steps * args.batch_size, seed=0))
    heldout = (torch.from_numpy(np.array(held.activations[:8192])) - train.mean) / train.scale
    preset = dataclasses.replace(
        get_preset("paper"),
        batch_size=args.batch_size,
        train_tokens=args.steps * args.batch_size,
        lr=3e-4,
        betas=(0.9, 0.99),
        warmup_frac=0.0,
        decay_frac=0.0,
    )
    roof = bench_roofline(batches[0], d_sae)
    print(f"encoder matmul roofline: {roof['tokens_per_s']:.0f} tokens/s ({roof['gflops']:.0f} GFLOP/s)")
    results = {}
    for variant in args.variants:
        assert torch.equal(
            _new_state(
                TrainJob(variant, args.k, 0, "paper", Path("/x")),
                d_in,
                dataclasses.replace(preset, expansion=args.expansion),
                "cpu",
            ).sae.W_enc,
            _build(variant, d_in, d_sae, args.k, seed=0).W_enc,
        )
        ours, sae_ours = bench_ours(variant, batches, d_in, d_sae, args.k, preset)
        lens, sae_lens_trained = bench_sae_lens(variant, batches, d_in, d_sae, args.k, preset)
        row = {
            "ours_tokens_per_s": ours["tokens_per_s"],
            "sae_lens_tokens_per_s": lens["tokens_per_s"],
            "ratio_to_sae_lens": ours["tokens_per_s"] / lens["tokens_per_s"],
            "fraction_of_roofline": ours["tokens_per_s"] / roof["tokens_per_s"],
            "ours_peak_mem_mb": ours["peak_mem_mb"],
            "sae_lens_peak_mem_mb": lens["peak_mem_mb"],
            "ours_final_nmse": _nmse(sae_ours, heldout),
            "sae_lens_final_nmse": _nmse(sae_lens_trained, heldout),
        }
        row["nmse_relative_difference"] = (
            abs(row["ours_final_nmse"] - row["sae_lens_final_nmse"]) / row["sae_lens_final_nmse"]
        )
        if not args.no_bf16:  # the documented accuracy check of the --bf16 option: same batches, same init
            low, sae_low = bench_ours(variant, batches, d_in, d_sae, args.k, preset, bf16=True)
            row["bf16_tokens_per_s"] = low["tokens_per_s"]
            row["bf16_final_nmse"] = _nmse(sae_low, heldout)
            row["bf16_nmse_relative_difference"] = (
                abs(row["bf16_final_nmse"] - row["ours_final_nmse"]) / row["ours_final_nmse"]
            )
            print(
                f"{variant} bf16 encoder: {low['tokens_per_s']:.0f} tok/s, nMSE {row['bf16_final_nmse']:.4f} "
                f"({100 * row['bf16_nmse_relative_difference']:.2f}% from fp32)"
            )
        row["step_cpu_time_share"] = step_breakdown(variant, batches[:6], d_in, d_sae, args.k, preset)
        print(f"{variant} step breakdown (share of CPU time): {row['step_cpu_time_share']}")
        results[variant] = row
        print(
            f"{variant}: ours {row['ours_tokens_per_s']:.0f} tok/s, sae_lens {row['sae_lens_tokens_per_s']:.0f} tok/s "
            f"(x{row['ratio_to_sae_lens']:.2f}), {100 * row['fraction_of_roofline']:.0f}% of roofline, "
            f"peak mem {row['ours_peak_mem_mb']:.0f} vs {row['sae_lens_peak_mem_mb']:.0f} MB, "
            f"nMSE {row['ours_final_nmse']:.4f} vs {row['sae_lens_final_nmse']:.4f}"
        )
    atomic_write_json(
        OUT,
        {
            "setup": {
                "model": args.model,
                "layer": args.layer,
                "d_in": d_in,
                "d_sae": d_sae,
                "k": args.k,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "tokens": args.steps * args.batch_size,
                "threads": torch.get_num_threads(),
                "cache": str(train.directory),
                "nmse": "held-out activations (8,192 rows), normalised like training, sum||x-x_hat||^2/sum||x||^2",
            },
            "roofline": roof,
            "variants": results,
            "versions": package_versions(),
        },
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
