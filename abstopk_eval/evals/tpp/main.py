"""Targeted probe perturbation (TPP; sae_bench's methodology on offline data, sign-correct).

Per multi-class dataset, one binary probe per class (class vs the rest, balanced as in sae_bench's
`prepare_probe_data`) is trained on the model's pooled residual at the SAE layer. For each class i and SAE,
latents are ranked by their attribution to probe i on its training set (sae_bench's
`get_effects_per_class_precomputed_acts` with `perform_scr=False`, on latents oriented towards the class;
`abstopk_eval.evals.selection.tpp_effects`):

    effect_j = max(0, mean z'_j(class i) - mean z'_j(rest)) * <w_i, d'_j>,   z'_j = s_j z_j,  d'_j = s_j d_j

with s_j the sign of latent j's activations on class i (`selection.orientation`). The top n non-zero effects
(largest first) are ablated in pooled space (pooled_x - sum_{j in S} pooled_z_j d_j, exact for mean pooling; see
`abstopk_eval.evals.pooled`) on every test text, and every class probe is re-scored:

    S_TPP(n) = mean_i [acc_i - acc_i(ablate S_i)] - mean_i mean_{j != i} [acc_j - acc_j(ablate S_i)]

(`tpp_threshold_{n}_total_metric`, with the two terms as `..._intended_diff_only` / `..._unintended_diff_only`),
averaged over the datasets.

Deviations from sae_bench:

- Orientation (sign). sae_bench clamps the raw mean difference at 0 ("only consider latents more active on the
  positive class"), which for a signed latent keeps only those whose positive pole marks the class. Orienting
  first keeps that intent for both signs: for z >= 0, s_j = +1 and the rule is sae_bench's exactly; negating a
  latent changes no selection; a latent that is +a on the class and -a on the rest (the class in its sign) is
  selected with effect 2a <w, d>. The earlier rule here gated on mean |z| being larger on the class, which
  dropped exactly that latent.
- Probes, data and pooling as `abstopk_eval.evals.probes` / `pooled` describe (offline datasets, pooled ablation).
- Intervals (not in sae_bench, which reports point values only): 95% percentile bootstrap over the test texts
  (`abstopk_eval.evals.bootstrap`). Each test text keeps its 0/1 correctness under every class probe whose test
  set holds it, clean and after each class's ablation; under each of `n_bootstrap` resamples (`resample_counts`
  over every dataset's test texts, seeded by `random_seed`; they depend only on the texts, never on the SAE) every
  accuracy is the count-weighted mean over its task's test texts and S_TPP is recomputed. The latent selection
  (made on the training texts) is kept fixed, so the interval is conditional on the chosen latents: it measures
  the test-set noise, not the selection's. Each result keeps the samples of `tpp_threshold_{n}_total_metric` for
  every n (`bootstrap_samples`; two SAEs' samples pair, so the report can difference them resample by resample)
  and the intervals of those and of the intended / unintended terms (`bootstrap_ci95`), in
  eval_result_unstructured.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from sae_bench.evals.scr_and_tpp.eval_output import TppMetricCategories, TppMetrics, TppResultDetail
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
)
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.evals.pooled import ablate, check_affine_decoder, decoder_rows
from abstopk_eval.evals.probes import (
    LinearProbe,
    check_source,
    fit_task_probe,
    prepare_class_tasks,
    resampled_accuracy,
)
from abstopk_eval.evals.selection import select_top_n
from abstopk_eval.evals.selection import tpp_effects as oriented_tpp_effects
from abstopk_eval.evals.tpp.eval_config import TppEvalConfig
from abstopk_eval.evals.tpp.eval_output import TppEvalOutput

EVAL_NAME = "tpp"
BOOTSTRAP_UNIT = "test text of a dataset (one resample over every dataset's test texts; selected latents fixed)"


def tpp_effects(z_train: np.ndarray, y: np.ndarray, probe: LinearProbe, rows_dec: np.ndarray) -> np.ndarray:
    """Attribution of each latent to `probe` on the positive class (see the module docstring); sign-invariant."""
    return oriented_tpp_effects(z_train, y, probe.weight, rows_dec)


def tpp_scores(
    clean: dict[str, Any],
    ablated: dict[str, dict[int, dict[str, Any]]],
    n_values: list[int],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """sae_bench's `create_tpp_plotting_dict`: (means over classes, per-class metrics). Accuracies are floats, or
    [R] arrays of their bootstrap resamples (then every metric is an [R] array of samples)."""
    per_class: dict[str, dict[str, Any]] = {}
    for i in clean:
        metrics = {}
        for n in n_values:
            intended = clean[i] - ablated[i][n][i]
            unintended = np.mean([clean[j] - ablated[i][n][j] for j in clean if j != i], axis=0)
            metrics[f"tpp_threshold_{n}_total_metric"] = intended - unintended
            metrics[f"tpp_threshold_{n}_intended_diff_only"] = intended
            metrics[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[i] = metrics
    keys = next(iter(per_class.values())).keys()
    return {k: np.mean([m[k] for m in per_class.values()], axis=0) for k in keys}, per_class


def run_tpp(
    ctx: EvalContext, saes: dict[str, SAE], config: TppEvalConfig | None = None, datasets: dict[str, Any] | None = None
) -> dict[str, TppEvalOutput]:
    """TPP results per SAE. `datasets` (name -> LabelledDataset) overrides loading by name."""
    start = time.perf_counter()
    cfg = resolve_config(TppEvalConfig, ctx, EVAL_NAME, config)
    check_source(cfg.dataset_source)
    if not cfg.dataset_names:
        raise UserError("tpp needs at least one dataset")
    if not cfg.n_values or min(cfg.n_values) < 1:
        raise UserError(f"tpp n_values must be positive, got {cfg.n_values}")
    for sid, sae in saes.items():
        check_affine_decoder(sae, sid)
    datasets = datasets or {}
    cards: list[dict[str, Any]] = []
    by_ds: dict[str, dict[str, dict[str, float]]] = {sid: {} for sid in saes}
    unstructured: dict[str, dict[str, Any]] = {
        sid: {"per_class": {}, "clean_accuracies": {}, "selected_latents": {}, "n_texts": {}} for sid in saes
    }
    rows_dec = {}
    # bootstrap: every dataset's test texts (units), each task's columns among them, per-text correctness
    unit_keys: list[str] = []
    boot_data: list[dict[str, Any]] = []
    boot_hits: dict[str, list[dict[str, dict[int, dict[str, np.ndarray]]]]] = {sid: [] for sid in saes}
    for name in tqdm(cfg.dataset_names, desc="tpp: datasets", unit="dataset"):
        data = prepare_class_tasks(ctx, saes, name, cfg, datasets.get(name), EVAL_NAME, min_classes=2)
        ds, tasks, pooled, train_idx, test_idx = data.dataset, data.tasks, data.pooled, data.train_idx, data.test_idx
        cards.append(data.card)
        x = pooled.model.numpy().astype(np.float64)
        probes = {
            t.name: fit_task_probe(x[t.train_rows], t.train_y, x[t.test_rows], t.test_y, cfg, seed=cfg.random_seed + i)
            for i, t in enumerate(tasks)
        }
        clean = {t.name: probes[t.name].accuracy(x[t.test_rows], t.test_y) for t in tasks}
        position = np.full(len(ds.texts), -1, dtype=np.int64)
        position[test_idx] = np.arange(len(test_idx))
        x_test = x[test_idx]
        boot_data.append(
            {
                "offset": len(unit_keys),
                "columns": {t.name: position[t.test_rows] for t in tasks},
                "clean": {t.name: probes[t.name].correct(x[t.test_rows], t.test_y) for t in tasks},
            }
        )
        unit_keys += [f"{name}/{int(r)}/{ds.texts[r]}" for r in test_idx]
        for sid, sae in tqdm(saes.items(), desc=f"tpp: {name} ablations", unit="sae", leave=False):
            if sid not in rows_dec:
                rows_dec[sid] = decoder_rows(sae)
            z = pooled.latents[sid].numpy()
            z_test = z[test_idx].astype(np.float64)
            ablated: dict[str, dict[int, dict[str, float]]] = {}
            hits: dict[str, dict[int, dict[str, np.ndarray]]] = {}
            selected: dict[str, list[int]] = {}
            for t in tasks:
                effects = tpp_effects(z[t.train_rows].astype(np.float64), t.train_y, probes[t.name], rows_dec[sid])
                selected[t.name] = [int(i) for i in select_top_n(effects, max(cfg.n_values))]
                ablated[t.name], hits[t.name] = {}, {}
                for n in cfg.n_values:
                    x_abl = ablate(x_test, z_test, rows_dec[sid], select_top_n(effects, n))
                    hits[t.name][n] = {
                        u.name: probes[u.name].correct(x_abl[position[u.test_rows]], u.test_y) for u in tasks
                    }
                    ablated[t.name][n] = {u: float(h.mean()) for u, h in hits[t.name][n].items()}
            boot_hits[sid].append(hits)
            means, per_class = tpp_scores(clean, ablated, cfg.n_values)
            by_ds[sid][name] = means
            unstructured[sid]["per_class"][name] = per_class
            unstructured[sid]["clean_accuracies"][name] = clean
            unstructured[sid]["selected_latents"][name] = selected
            unstructured[sid]["n_texts"][name] = {
                "train": int(len(train_idx)),
                "test": int(len(test_idx)),
                "truncated": pooled.n_truncated,
            }
    counts = resample_counts(len(unit_keys), cfg.n_bootstrap, cfg.random_seed).numpy()
    boot: dict[str, list[dict[str, np.ndarray]]] = {sid: [] for sid in saes}
    for d_index, data_boot in enumerate(boot_data):
        columns = {
            task: counts[:, data_boot["offset"] + cols] for task, cols in data_boot["columns"].items()
        }  # each task's test texts' counts

        def acc(task: str, h: np.ndarray, columns: dict[str, np.ndarray] = columns) -> np.ndarray:
            return resampled_accuracy(columns[task], h)

        clean_r = {task: acc(task, h) for task, h in data_boot["clean"].items()}
        for sid in saes:
            ablated_r = {
                i: {n: {j: acc(j, h) for j, h in by_task.items()} for n, by_task in by_n.items()}
                for i, by_n in boot_hits[sid][d_index].items()
            }
            boot[sid].append(tpp_scores(clean_r, ablated_r, cfg.n_values)[0])
    headline = [f"tpp_threshold_{n}_total_metric" for n in cfg.n_values]
    seconds = time.perf_counter() - start
    known_metrics = {f.name for f in fields(TppMetrics)}
    known_detail = {f.name for f in fields(TppResultDetail)}
    outputs = {}
    for sid, sae in saes.items():
        keys = by_ds[sid][cfg.dataset_names[0]].keys()
        metrics = {k: float(np.mean([by_ds[sid][d][k] for d in cfg.dataset_names])) for k in keys}
        samples = {k: np.mean([per_ds[k] for per_ds in boot[sid]], axis=0) for k in keys}
        record = paired_samples(BOOTSTRAP_UNIT, unit_keys, cfg.random_seed, {k: samples[k] for k in headline})
        intervals = {
            **sample_intervals(record),
            **{k: list(percentile_interval(torch.as_tensor(v))) for k, v in samples.items() if k not in headline},
        }
        outputs[sid] = TppEvalOutput(
            eval_config=cfg,
            eval_result_metrics=TppMetricCategories(
                tpp_metrics=TppMetrics(**{k: v for k, v in metrics.items() if k in known_metrics})
            ),
            eval_result_details=[
                TppResultDetail(dataset_name=d, **{k: v for k, v in by_ds[sid][d].items() if k in known_detail})
                for d in cfg.dataset_names
            ],
            eval_result_unstructured={
                **unstructured[sid],
                "metrics": metrics,
                INTERVALS_KEY: intervals,
                PAIRED_SAMPLES_KEY: record,
                "bootstrap_unit": BOOTSTRAP_UNIT,
                "eval_seconds_all_saes": seconds,
            },
            dataset_cards=cards,
            **output_common(ctx, sid, sae),
        )
    return outputs


TPP = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=TppEvalConfig,
        output_cls=TppEvalOutput,
        description="Targeted probe perturbation on language and topic: ablate each class's latents, "
        "S_TPP = drop of its own probe minus mean drop of the other probes",
        run=run_tpp,
    )
)
