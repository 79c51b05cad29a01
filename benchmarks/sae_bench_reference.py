"""Sparse probing and TPP: this project's evaluations against sae_bench's own code, side by side.

Both run in one process on the same model (the offline default), the same offline labelled texts, the same
tokenisation (BOS / EOS / padding masked, as sae_bench's `mask_bos_pad_eos_tokens=True`), the same
train / test split and the same trained SAEs. sae_bench cannot load its hub datasets or build a
HookedTransformer offline, so its one model-facing function, `get_dataset_activations`, is replaced by one
that returns our per-token activations in its format ({class name: [texts, tokens, d_model]}, masked
positions zero); everything after that (pooling, its LLM probes, top-k selection by |mean difference|,
sklearn / torch probes, TPP attribution and ablation) is sae_bench's code, unmodified.

Timing: sae_bench keeps every text's per-token activations ([texts, tokens, d_model] in memory; building
them is `sae_bench_setup_token_activations_s`) and then costs `sae_bench_<eval>_s` per SAE (its LLM probes
are retrained in every call). Ours scores all SAEs in one call that includes its one model pass
(`ours_<eval>_all_saes_s`; TPP reuses sparse probing's memoised pass), keeping only pooled vectors.

    python benchmarks/sae_bench_reference.py [--saes topk_k64_s0 abstopk_k64_s0] \
        [--datasets sentiment language code topic]

Writes benchmarks/results/sae_bench_reference.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time

# sae_bench's jaxtyping annotations bind "train_dataset_size" to the per-class size in train_probe_on_activations
# and then to twice that in the nested train_sklearn_probe, which the installed jaxtyping rejects; the checks are
# annotations only (they change no value), so they are switched off for sae_bench here
os.environ.setdefault("JAXTYPING_DISABLE", "1")
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.pooled import clear_pooled_cache, special_token_ids, tokenize_texts
from abstopk_eval.evals.probes import load_dataset, split_per_class
from abstopk_eval.evals.sparse_probing.eval_config import SparseProbingEvalConfig
from abstopk_eval.evals.sparse_probing.main import run_sparse_probing
from abstopk_eval.evals.tpp.eval_config import TppEvalConfig
from abstopk_eval.evals.tpp.main import run_tpp
from abstopk_eval.io import atomic_write_json
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.loading import load_model
from abstopk_eval.models.registry import get_model_spec
from abstopk_eval.provenance import package_versions
from abstopk_eval.saes.io import load_sae
from abstopk_eval.training.trainer import SAE_DIRNAME

log = logging.getLogger("sae_bench_reference")


@torch.no_grad()
def token_activations(
    adapter: ModelAdapter, layer: int, texts: list[str], context_length: int, batch: int = 32
) -> torch.Tensor:
    """[n, L, d] residual activations per token, zero at BOS / EOS / padding (sae_bench's masking convention)."""
    ids, _ = tokenize_texts(adapter.tokenizer, texts, context_length)
    special = torch.tensor(special_token_ids(adapter), dtype=torch.long)
    pad_id = adapter.tokenizer.pad_token_id or 0
    width = max(len(i) for i in ids)
    out = torch.zeros(len(ids), width, adapter.d_model)
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, seq in enumerate(chunk):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        acts = adapter.activations(input_ids, layer, attention_mask=mask).float().cpu()
        valid = mask.bool() & ~torch.isin(input_ids, special)
        out[start : start + len(chunk)] = acts * valid[..., None]
    return out


def class_dicts(ds: Any, acts: torch.Tensor, train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[dict, dict]:
    labels = np.asarray(ds.labels)
    names = list(ds.class_names)

    def split(idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {names[c]: acts[torch.as_tensor(idx[labels[idx] == c])] for c in range(len(names))}

    return split(train_idx), split(test_idx)


def dataset_activations(
    adapter: ModelAdapter, layer: int, name: str, cfg: SparseProbingEvalConfig
) -> tuple[Any, dict, dict, float]:
    """(dataset, sae_bench's train and test {class: token activations}, seconds the LLM pass took) at our sizes."""
    ds = load_dataset(name, "offline", max_per_class=cfg.train_per_class + cfg.test_per_class, seed=cfg.random_seed)
    train_idx, test_idx = split_per_class(ds.labels, cfg.train_per_class, cfg.test_per_class, cfg.random_seed)
    began = time.perf_counter()
    acts = token_activations(adapter, layer, list(ds.texts), cfg.context_length)
    seconds = time.perf_counter() - began
    train, test = class_dicts(ds, acts, train_idx, test_idx)
    return ds, train, test, seconds


class _NoModel:
    """Stands in for sae_bench's HookedTransformer: activations are supplied, the model is never called."""

    def to(self, *_: Any, **__: Any) -> _NoModel:
        return self


def sae_bench_sparse_probing(
    name: str, train: dict, test: dict, sae: Any, k_values: list[int], layer: int
) -> dict[str, float]:
    from sae_bench.evals.sparse_probing import main as sp
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    cfg = SparseProbingEvalConfig(k_values=k_values, lower_vram_usage=True, sae_batch_size=32)
    original = sp.get_dataset_activations
    sp.get_dataset_activations = lambda *a, **kw: (
        {k: v.clone() for k, v in train.items()},
        {k: v.clone() for k, v in test.items()},
    )
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
            results, _ = sp.run_eval_single_dataset(
                name,
                cfg,
                sae,
                _NoModel(),
                layer,
                f"blocks.{layer}.hook_resid_post",
                "cpu",
                folder,
                save_activations=False,
            )
    finally:
        sp.get_dataset_activations = original
    return results


def sae_bench_tpp(name: str, train: dict, test: dict, sae: Any, n_values: list[int], layer: int) -> dict[str, float]:
    from sae_bench.evals.scr_and_tpp import main as st
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig
    from sae_bench.sae_bench_utils import dataset_info

    cfg = ScrAndTppEvalConfig(perform_scr=False, n_values=n_values, lower_vram_usage=True, sae_batch_size=32)
    patched = {"get_dataset_activations": st.get_dataset_activations}
    st.get_dataset_activations = lambda *a, **kw: (
        {k: v.clone() for k, v in train.items()},
        {k: v.clone() for k, v in test.items()},
    )
    st.COLUMN2_VALS_LOOKUP[name] = ("-", "-")
    dataset_info.chosen_classes_per_dataset[name] = list(train)
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
            accuracies, llm_accuracies = st.run_eval_single_dataset(
                name,
                cfg,
                sae,
                _NoModel(),
                layer,
                f"blocks.{layer}.hook_resid_post",
                "cpu",
                folder,
                save_activations=False,
            )
        metrics, _ = st.create_tpp_plotting_dict(accuracies, llm_accuracies)
    finally:
        st.get_dataset_activations = patched["get_dataset_activations"]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--saes", nargs="+", default=["topk_k64_s0", "abstopk_k64_s0"])
    parser.add_argument("--datasets", nargs="+", default=["sentiment", "language", "code", "topic"])
    parser.add_argument("--evals", nargs="+", default=["sparse_probing", "tpp"], choices=["sparse_probing", "tpp"])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sae_bench_reference.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_grad_enabled(False)
    spec = get_model_spec(args.model)
    layer = spec.default_layer if args.layer is None else spec.check_layer(args.layer)
    adapter = ModelAdapter.from_loaded(load_model(spec.key))
    saes = {
        sid: load_sae(args.runs_dir / spec.key / f"layer_{layer}" / sid / SAE_DIRNAME, expected_d_in=spec.d_model)
        for sid in args.saes
    }
    ctx = EvalContext(
        adapter=adapter,
        model_key=spec.key,
        model_name=spec.hf_id,
        layer=layer,
        eval_tokens=torch.zeros(1, 2, dtype=torch.long),
        heldout_activations=lambda: torch.zeros(1, spec.d_model),
        dataset="-",
    )
    sp_cfg, tpp_cfg = SparseProbingEvalConfig(), TppEvalConfig()
    report: dict[str, Any] = {
        "model": spec.key,
        "layer": layer,
        "saes": args.saes,
        "datasets": {},
        "versions": package_versions(),
        "sparse_probing_k_values": sp_cfg.k_values,
        "tpp_n_values": tpp_cfg.n_values,
    }
    for name in args.datasets:
        ds, train, test, acts_s = dataset_activations(adapter, layer, name, sp_cfg)
        entry: dict[str, Any] = {"n_texts": len(ds.texts), "classes": list(ds.class_names), "saes": {}}
        entry["sae_bench_setup_token_activations_s"] = acts_s
        # ours: every SAE in one call, as the runner does (one model pass shared by the SAEs and by TPP)
        clear_pooled_cache()
        ours_sp, ours_tpp = {}, {}
        if "sparse_probing" in args.evals:
            t0 = time.perf_counter()
            out = run_sparse_probing(ctx, saes, SparseProbingEvalConfig(dataset_names=[name]), datasets={name: ds})
            entry["ours_sparse_probing_all_saes_s"] = time.perf_counter() - t0
            ours_sp = {sid: o.eval_result_unstructured["dataset_means"][name] for sid, o in out.items()}
        # with two classes the one-vs-rest tasks are one task with flipped labels, so S_TPP is 0 by construction
        # (ours gives exactly 0; sae_bench's differs from 0 only by probe-training noise): not compared
        run_tpp_here = "tpp" in args.evals and len(ds.class_names) > 2
        if run_tpp_here:
            t0 = time.perf_counter()
            out = run_tpp(ctx, saes, TppEvalConfig(dataset_names=[name]), datasets={name: ds})
            entry["ours_tpp_all_saes_s"] = time.perf_counter() - t0
            ours_tpp = {sid: o.eval_result_metrics.tpp_metrics for sid, o in out.items()}
        for sid, sae in saes.items():
            row: dict[str, Any] = {}
            if "sparse_probing" in args.evals:
                torch.manual_seed(0)
                t0 = time.perf_counter()
                theirs = sae_bench_sparse_probing(name, train, test, sae, sp_cfg.k_values, layer)
                row["sae_bench_sparse_probing_s"] = time.perf_counter() - t0
                mine = ours_sp[sid]
                row["sparse_probing"] = {
                    f"top_{k}": {
                        "sae_bench": theirs[f"sae_top_{k}_test_accuracy"],
                        "ours": mine[f"sae_top_{k}_test_accuracy"],
                    }
                    for k in sp_cfg.k_values
                }
                row["sparse_probing"]["llm_top_1"] = {
                    "sae_bench": theirs.get("llm_top_1_test_accuracy"),
                    "ours": mine.get("llm_top_1_test_accuracy"),
                }
            if run_tpp_here:
                torch.manual_seed(0)
                t0 = time.perf_counter()
                theirs = sae_bench_tpp(name, train, test, sae, tpp_cfg.n_values, layer)
                row["sae_bench_tpp_s"] = time.perf_counter() - t0
                row["tpp"] = {
                    f"n_{n}": {
                        "sae_bench": theirs[f"tpp_threshold_{n}_total_metric"],
                        "ours": getattr(ours_tpp[sid], f"tpp_threshold_{n}_total_metric"),
                    }
                    for n in tpp_cfg.n_values
                }
            entry["saes"][sid] = row
            log.info("%s %s: %s", name, sid, {k: v for k, v in row.items() if k.endswith("_s")})
            for metric in ("sparse_probing", "tpp"):
                for key, pair in row.get(metric, {}).items():
                    print(
                        f"{name:10s} {sid:16s} {metric:14s} {key:10s} sae_bench {pair['sae_bench']:.3f}  ours "
                        f"{pair['ours']:.3f}"
                    )
        report["datasets"][name] = entry
        atomic_write_json(args.out, report)  # after every dataset: an interrupted run keeps what it measured
    summary: dict[str, Any] = {}
    for metric, keys in (
        ("sparse_probing", [f"top_{k}" for k in sp_cfg.k_values]),
        ("tpp", [f"n_{n}" for n in tpp_cfg.n_values]),
    ):
        for sid in args.saes:
            diffs = [
                entry["saes"][sid][metric][key]["ours"] - entry["saes"][sid][metric][key]["sae_bench"]
                for entry in report["datasets"].values()
                if metric in entry["saes"][sid]
                for key in keys
            ]
            if diffs:
                summary[f"{metric}/{sid}"] = {
                    "mean_diff_ours_minus_sae_bench": float(np.mean(diffs)),
                    "max_abs_diff": float(np.max(np.abs(diffs))),
                    "n": len(diffs),
                }
    report["summary"] = summary
    atomic_write_json(args.out, report)
    for key, value in summary.items():
        print(
            f"{key}: mean diff {value['mean_diff_ours_minus_sae_bench']:+.3f}, max |diff| "
            f"{value['max_abs_diff']:.3f} over {value['n']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
