"""GPU check, under 8 minutes on one GPU with no network: what this CPU-only project cannot test here.

Three parts, each written to benchmarks/results/gpu_check.json (`--device cpu --small` writes
gpu_check_cpu_smoke.json instead: a check of this script, not a GPU result):

1. kernels: the sparse k-SAE training step (`training.sparse_ksae`) against sae_lens's dense
   `training_forward_pass` on the device, for every k-sparse variant: loss, reconstruction, latents and every
   gradient, as the CPU unit test does (tests/training/test_sparse_ksae.py), at a larger size;
2. throughput: training tokens/s of ours vs sae_lens's `SAETrainer` at d_in 2560, 16x (40,960 latents), k 256,
   batch 4,096 (the paper's Qwen3-4B shape), on synthetic activations (sparse combinations of random atoms: no
   model or cache is needed, so the speed, not the quality, is measured), median of the steady steps;
3. e2e: the tiny random architectures (Llama, Gemma-2, Gemma-3, Qwen3, GPT-2, GPT-NeoX, tests/helpers/models.py)
   saved locally and run through `python -m abstopk_eval.run` with the smoke preset, core and sparse probing, on
   the device.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--parts kernels throughput e2e]

Without a CUDA device (and without `--device cpu`) it prints one `error:` line and exits 2: results/gpu_check.json
exists only where it has run on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers (the tiny models) and benchmarks.* import from the checkout

from abstopk_eval.io import atomic_write_json  # noqa: E402
from abstopk_eval.provenance import package_versions  # noqa: E402
from abstopk_eval.saes.variants import SparsityHyperparams, get_variant  # noqa: E402
from abstopk_eval.training.sparse_ksae import sparse_training_forward  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
K_VARIANTS = ("topk", "batchtopk", "abstopk", "batch-abstopk")
PARTS = ("kernels", "throughput", "e2e")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_kernels(device: str, d_in: int, d_sae: int, k: int, batch: int) -> dict[str, Any]:
    """Max abs differences, sparse step vs sae_lens's dense step, per variant (with a third of latents dead)."""
    from sae_lens.saes.sae import TrainStepInput

    out: dict[str, Any] = {"shape": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch}}
    for variant in K_VARIANTS:
        torch.manual_seed(0)
        spec = get_variant(variant)
        sae = spec.build(d_in, d_sae, SparsityHyperparams(k=k, l1_coefficient=1.0, l0_coefficient=1.0)).to(device)
        with torch.no_grad():  # non-trivial decoder norms and biases, as in the unit test
            sae.W_dec.mul_(torch.rand(d_sae, 1, device=device) * 2 + 0.5)
            sae.b_enc.normal_(0, 0.1)
            sae.b_dec.normal_(0, 0.1)
        x = torch.randn(batch, d_in, device=device) * 2
        dead = torch.arange(d_sae, device=device) % 3 == 0
        step = TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
        )
        dense = sae.training_forward_pass(step)
        sae.zero_grad(set_to_none=True)
        dense.loss.backward()
        dense_grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
        sparse = sparse_training_forward(sae, x, spec, dead)
        sae.zero_grad(set_to_none=True)
        sparse.loss.backward()
        acts = torch.zeros(batch, d_sae, device=device).index_put_(
            (sparse.active.rows, sparse.active.cols), sparse.values.detach()
        )
        sparse_loss, dense_loss = sparse.loss.detach(), dense.loss.detach()
        diffs = {
            "loss_rel": float((sparse_loss - dense_loss).abs() / dense_loss.abs()),
            "sae_out_abs": float((sparse.sae_out.detach() - dense.sae_out.detach()).abs().max()),
            "latents_abs": float((acts - dense.feature_acts.detach()).abs().max()),
        }
        for name, grad in dense_grads.items():
            got = dict(sae.named_parameters())[name].grad
            diffs[f"grad_{name}_rel"] = float((got - grad).abs().max() / grad.abs().max().clamp_min(1e-12))
        # tf32 / reduction order on a GPU: looser than the CPU test's 1e-5, still far below any real defect
        diffs["pass"] = all(v < 1e-3 for key, v in diffs.items() if key != "pass")
        out[variant] = diffs
        print(f"kernels {variant}: " + ", ".join(f"{key} {v:.2e}" for key, v in diffs.items() if key != "pass"))
    out["pass"] = all(out[v]["pass"] for v in K_VARIANTS)
    return out


def _synthetic_batches(d_in: int, batch: int, steps: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    atoms = torch.randn(4 * d_in, d_in, generator=g) / d_in**0.5
    batches = []
    for _ in range(steps):
        codes = torch.randn(batch, 4 * d_in, generator=g) * (torch.rand(batch, 4 * d_in, generator=g) < 0.02)
        batches.append((codes @ atoms).to(device))
    return batches


def check_throughput(device: str, d_in: int, expansion: int, k: int, batch: int, steps: int) -> dict[str, Any]:
    """Median tokens/s of the steady steps (the first two are warm-up) of ours and of sae_lens's SAETrainer."""
    import dataclasses

    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from abstopk_eval.config import get_preset
    from abstopk_eval.training.trainer import TrainJob, _new_state, _train_step

    batches = _synthetic_batches(d_in, batch, steps, device)
    preset = dataclasses.replace(
        get_preset("paper"),
        batch_size=batch,
        train_tokens=steps * batch,
        expansion=expansion,
        warmup_frac=0.0,
        decay_frac=0.0,
    )
    out: dict[str, Any] = {"shape": {"d_in": d_in, "d_sae": d_in * expansion, "k": k, "batch": batch, "steps": steps}}
    for variant in ("topk", "abstopk"):
        state = _new_state(TrainJob(variant, k, 0, preset.name, Path("/nonexistent")), d_in, preset, device)
        ours = []
        for x in batches:
            _sync(device)
            began = time.perf_counter()
            _train_step(state, x, preset, sparse=True)
            _sync(device)
            ours.append(time.perf_counter() - began)
        sae = (
            get_variant(variant)
            .build(d_in, d_in * expansion, SparsityHyperparams(k=k, l1_coefficient=0.0, l0_coefficient=0.0))
            .to(device)
        )
        cfg = SAETrainerConfig(
            total_training_samples=steps * batch,
            train_batch_size_samples=batch,
            lr=preset.lr,
            lr_end=preset.lr,
            device=device,
            dead_feature_window=preset.dead_window_steps(),
            logger=LoggingConfig(log_to_wandb=False),
        )
        stamps: list[float] = []

        def provider(stamps=stamps):
            for x in batches:
                _sync(device)
                stamps.append(time.perf_counter())  # SAETrainer asks for a batch at the start of each step
                yield x

        SAETrainer(cfg=cfg, sae=sae, data_provider=provider()).fit()
        _sync(device)
        stamps.append(time.perf_counter())
        lens = [b - a for a, b in zip(stamps, stamps[1:])]
        row = {
            "ours_tokens_per_s": batch / statistics.median(ours[2:]),
            "sae_lens_tokens_per_s": batch / statistics.median(lens[2:]),
        }
        row["ratio_to_sae_lens"] = row["ours_tokens_per_s"] / row["sae_lens_tokens_per_s"]
        out[variant] = row
        print(
            f"throughput {variant}: ours {row['ours_tokens_per_s']:.0f} tok/s, sae_lens "
            f"{row['sae_lens_tokens_per_s']:.0f} tok/s (x{row['ratio_to_sae_lens']:.2f})"
        )
    return out


def check_e2e(device: str, timeout_s: int) -> dict[str, Any]:
    """Each tiny architecture through the real command line on `device` (smoke preset, core + sparse probing)."""
    from tests.helpers.models import TINY_BUILDERS, TinyModelFolders

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = TinyModelFolders(Path(tmp) / "models")
        for family in TINY_BUILDERS:
            work = Path(tmp) / family
            cmd = [sys.executable, "-m", "abstopk_eval.run", "--model", str(folders[family]), "--layer", "1"]
            cmd += ["--preset", "smoke", "--device", device, "--evals", "core", "sparse_probing", "--no-report"]
            cmd += ["--runs-dir", str(work / "runs"), "--results-dir", str(work / "results")]
            cmd += ["--cache-dir", str(work / "cache")]
            began = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
            results = sorted(p.name for p in (work / "results").rglob("*.json") if p.name != "identity.json")
            out[family] = {
                "returncode": done.returncode,
                "seconds": time.perf_counter() - began,
                "result_files": len(results),
                "stderr_tail": done.stderr[-1500:] if done.returncode else "",
            }
            print(f"e2e {family}: exit {done.returncode}, {len(results)} result files, {out[family]['seconds']:.0f}s")
    out["pass"] = all(v["returncode"] == 0 and v["result_files"] > 0 for v in out.values() if isinstance(v, dict))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--small", action="store_true", help="small shapes: a quick check of this script (CPU)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/gpu_check*.json)")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device here; this check has not run on a GPU (pass --device cpu --small to test the "
            "script itself)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.device == "cpu" and not args.small:
        print("error: --device cpu needs --small (the full shapes are for a GPU)", file=sys.stderr)
        raise SystemExit(2)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    began = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "small": args.small,
    }
    if "kernels" in args.parts:
        shape = (64, 1024, 16, 256) if args.small else (2560, 40960, 256, 2048)
        report["kernels"] = check_kernels(args.device, *shape)
    if "throughput" in args.parts:
        shape = (64, 16, 8, 512, 6) if args.small else (2560, 16, 256, 4096, 20)
        report["throughput"] = check_throughput(args.device, *shape)
    if "e2e" in args.parts:
        report["e2e"] = check_e2e(args.device, timeout_s=300)
    report["seconds"] = time.perf_counter() - began
    report["versions"] = package_versions()
    out = args.out or RESULTS / ("gpu_check_cpu_smoke.json" if args.device == "cpu" else "gpu_check.json")
    atomic_write_json(out, report)
    print(f"wrote {out} ({report['seconds']:.0f}s)")
    failed = [part for part in ("kernels", "e2e") if part in report and not report[part]["pass"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
