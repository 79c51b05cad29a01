"""Sparse probing (sae_bench's methodology, offline data, sign-correct).

Per dataset, one binary task per class (the class against an equal number of texts sampled evenly from the
other classes, as sae_bench's `prepare_probe_data`). Every text is mean-pooled over its tokens (BOS / EOS /
padding excluded) at the SAE layer, both the model's residual and each SAE's signed latents, from one shared
model pass (`abstopk_eval.evals.pooled`). For each k, the k latents whose pooled mean differs most **in
magnitude** between the two sides of the training set are the features of a logistic-regression probe; its
test accuracy, averaged over the tasks and then over the datasets, is `sae_top_{k}_test_accuracy`. The
baseline is the same probe on the model's pooled residual (all channels: `llm_test_accuracy`; top-k
channels: `llm_top_{k}_test_accuracy`).

Selection by |mean difference| (sae_bench's `get_top_k_mean_diff_mask`, `abstopk_eval.evals.selection`) and a
probe that is symmetric under negating a feature make every score invariant to negating a latent (a signed AbsTopK
latent is active when z != 0, with either sign). The magnitude is already what orienting a latent by its sign on
the class gives, so the rule is sae_bench's unchanged, and a latent that carries the class in its sign (+a on the
class, -a on the rest: difference 2a) ranks above a one-signed one (+a / 0: difference a).

Intervals: 95% percentile bootstrap intervals of the top-k accuracies (`bootstrap_ci95` in
eval_result_unstructured), each task's test texts resampled with replacement within the task (a stratified
bootstrap: every task keeps its size), n_bootstrap resamples. The samples themselves are kept under
`bootstrap_samples` (`abstopk_eval.evals.bootstrap.paired_samples`, units `{dataset}/{task}/{row}`), and the
intervals are `sample_intervals` of that record. The resamples depend only on the datasets, tasks and
`random_seed`, never on the SAE, so the report differences two SAEs sample by sample (paired). Latent selection
and probe fits are held fixed (the interval is over test texts only).
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from sae_bench.evals.sparse_probing.eval_output import (
    SparseProbingLlmMetrics,
    SparseProbingMetricCategories,
    SparseProbingResultDetail,
    SparseProbingSaeMetrics,
)
from sae_lens import SAE
from tqdm.auto import tqdm

from abstopk_eval.errors import UserError
from abstopk_eval.evals.bootstrap import (
    INTERVALS_KEY,
    PAIRED_SAMPLES_KEY,
    paired_samples,
    percentile_interval,
    resample_counts,
    sample_intervals,
    weighted_sums,
)
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.evals.probes import (
    BinaryTask,
    check_source,
    fit_probe,
    prepare_class_tasks,
)
from abstopk_eval.evals.selection import top_k_by_abs_mean_diff
from abstopk_eval.evals.sparse_probing.eval_config import SparseProbingEvalConfig
from abstopk_eval.evals.sparse_probing.eval_output import SparseProbingEvalOutput

EVAL_NAME = "sparse_probing"
N_TOP_LATENTS_RECORDED = 5


def probe_accuracies(
    features: np.ndarray,
    tasks: list[BinaryTask],
    cfg: SparseProbingEvalConfig,
    prefix: str,
    full: bool,
    correct: dict[str, dict[str, np.ndarray]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[int]]]:
    """{metric key: {task: test accuracy}} for the all-feature probe (if `full`) and each top-k probe, and the
    top features of each task (largest |mean difference| first). `correct`, when given, receives the top-k
    probes' per-test-example correctness ({metric key: {task: 0/1 array}}) for the bootstrap."""
    results: dict[str, dict[str, float]] = {}
    top: dict[str, list[int]] = {}
    if full:
        results[f"{prefix}_test_accuracy"] = {}
    for k in cfg.k_values:
        results[f"{prefix}_top_{k}_test_accuracy"] = {}
    for task in tasks:
        x_tr = np.asarray(features[task.train_rows], dtype=np.float64)
        x_te = np.asarray(features[task.test_rows], dtype=np.float64)
        if full:
            probe = fit_probe(x_tr, task.train_y, C=cfg.probe_C, max_iter=cfg.probe_max_iter)
            results[f"{prefix}_test_accuracy"][task.name] = probe.accuracy(x_te, task.test_y)
        order = top_k_by_abs_mean_diff(x_tr, task.train_y, max(cfg.k_values))
        top[task.name] = [int(i) for i in order[:N_TOP_LATENTS_RECORDED]]
        for k in cfg.k_values:
            sel = order[:k]
            probe = fit_probe(x_tr[:, sel], task.train_y, C=cfg.probe_C, max_iter=cfg.probe_max_iter)
            hits = probe.correct(x_te[:, sel], task.test_y)
            results[f"{prefix}_top_{k}_test_accuracy"][task.name] = float(hits.mean())
            if correct is not None:
                correct.setdefault(f"{prefix}_top_{k}_test_accuracy", {})[task.name] = hits
    return results, top


def bootstrap_accuracy_samples(
    correct: dict[str, dict[str, dict[str, np.ndarray]]], n_resamples: int, seed: int
) -> dict[str, torch.Tensor]:
    """[n_resamples] bootstrap samples of each metric (mean over datasets of the mean over tasks of test accuracy),
    resampling every task's test examples with replacement (datasets and tasks in sorted order; task t of dataset
    d draws with seed + 1000 d + t); the resamples depend only on (dataset, task, size), so every SAE is
    resampled alike (paired)."""
    samples: dict[str, torch.Tensor] = {}
    keys = next(iter(correct.values())).keys()
    for key in keys:
        per_dataset = []
        for d_index, (_dataset, by_key) in enumerate(sorted(correct.items())):
            per_task = [
                weighted_sums(
                    resample_counts(len(hits), n_resamples, seed + 1000 * d_index + t_index), torch.as_tensor(hits)
                )
                / len(hits)
                for t_index, (_, hits) in enumerate(sorted(by_key[key].items()))
            ]
            per_dataset.append(torch.stack(per_task).mean(0))
        samples[key] = torch.stack(per_dataset).mean(0)
    return samples


def bootstrap_accuracy_intervals(
    correct: dict[str, dict[str, dict[str, np.ndarray]]], n_resamples: int, seed: int
) -> dict[str, list[float]]:
    """95% interval of each metric from `bootstrap_accuracy_samples`."""
    return {
        key: list(percentile_interval(s)) for key, s in bootstrap_accuracy_samples(correct, n_resamples, seed).items()
    }


def probe_unit_keys(test_rows: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """`{dataset}/{task}/{row}` of every test text of every task (row: its index in the dataset), in the order
    `bootstrap_accuracy_samples` resamples them (datasets, then tasks, sorted)."""
    return [
        f"{dataset}/{task}/{int(row)}"
        for dataset, by_task in sorted(test_rows.items())
        for task, rows in sorted(by_task.items())
        for row in rows
    ]


BOOTSTRAP_UNIT = "test text of a task (resampled within its task; task seeds seed + 1000 dataset + task)"


def bootstrap_record(
    correct: dict[str, dict[str, dict[str, np.ndarray]]],
    test_rows: dict[str, dict[str, np.ndarray]],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The `paired_samples` record of the top-k accuracies (its `sample_intervals` are `bootstrap_ci95`)."""
    for dataset, by_key in correct.items():
        for hits_by_task in by_key.values():
            assert {t: len(h) for t, h in hits_by_task.items()} == {t: len(r) for t, r in test_rows[dataset].items()}
    return paired_samples(
        BOOTSTRAP_UNIT, probe_unit_keys(test_rows), seed, bootstrap_accuracy_samples(correct, n_resamples, seed)
    )


def _mean(per_task: dict[str, float]) -> float:
    return float(np.mean(list(per_task.values())))


def _keep(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def run_sparse_probing(
    ctx: EvalContext,
    saes: dict[str, SAE],
    config: SparseProbingEvalConfig | None = None,
    datasets: dict[str, Any] | None = None,
) -> dict[str, SparseProbingEvalOutput]:
    """Sparse-probing results per SAE. `datasets` (name -> LabelledDataset) overrides loading by name."""
    start = time.perf_counter()
    cfg = resolve_config(SparseProbingEvalConfig, ctx, EVAL_NAME, config)
    check_source(cfg.dataset_source)
    if not cfg.dataset_names:
        raise UserError("sparse_probing needs at least one dataset")
    if not cfg.k_values or min(cfg.k_values) < 1:
        raise UserError(f"sparse_probing k_values must be positive, got {cfg.k_values}")
    datasets = datasets or {}
    cards: list[dict[str, Any]] = []
    llm_by_ds: dict[str, dict[str, float]] = {}
    sae_by_ds: dict[str, dict[str, dict[str, float]]] = {sid: {} for sid in saes}
    unstructured: dict[str, dict[str, Any]] = {sid: {"per_class": {}, "top_latents": {}, "n_texts": {}} for sid in saes}
    correct: dict[str, dict[str, dict[str, dict[str, np.ndarray]]]] = {sid: {} for sid in saes}
    test_rows: dict[str, dict[str, np.ndarray]] = {}
    for name in tqdm(cfg.dataset_names, desc="sparse_probing: datasets", unit="dataset"):
        data = prepare_class_tasks(ctx, saes, name, cfg, datasets.get(name), EVAL_NAME)
        tasks, pooled, train_idx, test_idx = data.tasks, data.pooled, data.train_idx, data.test_idx
        cards.append(data.card)
        test_rows[name] = {task.name: task.test_rows for task in tasks}
        llm_results, _ = probe_accuracies(pooled.model.numpy(), tasks, cfg, "llm", full=True)
        llm_by_ds[name] = {key: _mean(v) for key, v in llm_results.items()}
        counts = {
            "train": int(len(train_idx)),
            "test": int(len(test_idx)),
            "truncated": pooled.n_truncated,
            "mean_tokens": float(pooled.n_tokens.float().mean()),
        }
        for sid in tqdm(saes, desc=f"sparse_probing: {name} probes", unit="sae", leave=False):
            results, top = probe_accuracies(
                pooled.latents[sid].numpy(),
                tasks,
                cfg,
                "sae",
                full=cfg.probe_all_latents,
                correct=correct[sid].setdefault(name, {}),
            )
            sae_by_ds[sid][name] = {key: _mean(v) for key, v in results.items()}
            unstructured[sid]["per_class"][name] = {**results, **llm_results}
            unstructured[sid]["top_latents"][name] = top
            unstructured[sid]["n_texts"][name] = counts
    records = {sid: bootstrap_record(correct[sid], test_rows, cfg.n_bootstrap, cfg.random_seed) for sid in saes}
    seconds = time.perf_counter() - start
    outputs = {}
    for sid, sae in saes.items():
        llm_mean = {
            key: float(np.mean([llm_by_ds[d][key] for d in cfg.dataset_names]))
            for key in llm_by_ds[cfg.dataset_names[0]]
        }
        sae_mean = {
            key: float(np.mean([sae_by_ds[sid][d][key] for d in cfg.dataset_names]))
            for key in sae_by_ds[sid][cfg.dataset_names[0]]
        }
        details = [
            SparseProbingResultDetail(
                dataset_name=d, **_keep(SparseProbingResultDetail, {**llm_by_ds[d], **sae_by_ds[sid][d]})
            )
            for d in cfg.dataset_names
        ]
        outputs[sid] = SparseProbingEvalOutput(
            eval_config=cfg,
            eval_result_metrics=SparseProbingMetricCategories(
                llm=SparseProbingLlmMetrics(**_keep(SparseProbingLlmMetrics, llm_mean)),
                sae=SparseProbingSaeMetrics(**_keep(SparseProbingSaeMetrics, sae_mean)),
            ),
            eval_result_details=details,
            eval_result_unstructured={
                **unstructured[sid],
                "dataset_means": {d: {**llm_by_ds[d], **sae_by_ds[sid][d]} for d in cfg.dataset_names},
                INTERVALS_KEY: sample_intervals(records[sid]),
                PAIRED_SAMPLES_KEY: records[sid],
                "bootstrap_unit": "test texts of each task (resampled within the task)",
                "eval_seconds_all_saes": seconds,
            },
            dataset_cards=cards,
            **output_common(ctx, sid, sae),
        )
    return outputs


SPARSE_PROBING = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=SparseProbingEvalConfig,
        output_cls=SparseProbingEvalOutput,
        description="Logistic-regression probes on the top-k latents by |mean difference| (sentiment, language, "
        "code, topic) "
        "vs probes on the model's pooled residual",
        run=run_sparse_probing,
    )
)
