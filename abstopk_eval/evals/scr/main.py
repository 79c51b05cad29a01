"""Spurious correlation removal (SCR; sae_bench's methodology on offline data, sign-correct).

Data. A dataset with a class label (column 1, e.g. the review's domain) and a binary attribute (column 2, e.g.
sentiment). For a class pair (A, B) and attribute values (pos, neg), four quadrants are sampled; as in
sae_bench's `get_spurious_corr_data`, a quadrant holds `train_set_size // 4` training texts (the two diagonal
quadrants twice that, for the biased set) and `test_set_size // 4` test texts. Three linear probes are trained
on the model's pooled residual at the SAE layer:

- biased probe: (A, pos) vs (B, neg) only, so column 1 and column 2 are perfectly correlated and the probe
  learns both;
- column-1 probe (the oracle for direction 1): A vs B, balanced over the attribute;
- column-2 probe (the oracle for direction 2): pos vs neg, balanced over the class.

Latent selection (sae_bench's `get_effects_per_class_precomputed_acts` with `perform_scr=True`): for the
column-2 probe (and its balanced training set), effect_i = |(mean z_i(pos) - mean z_i(neg)) * <w, d_i>|,
where z are the pooled signed latents and d_i latent i's decoder row; the top n non-zero effects are ablated.
The product is unchanged when a latent is negated (both factors flip), and its magnitude is taken, so the
selection is sign-correct: orienting each latent (`abstopk_eval.evals.selection`) multiplies both factors by the
same sign, so the oriented rule is sae_bench's rule unchanged, and a latent that carries the attribute in its sign
(+a on one value, -a on the other) has the largest mean difference, 2a. No deviation from sae_bench here.

Ablation: pooled_x - sum_{i in S} pooled_z_i d_i, which equals the mean over tokens of the per-token ablation
(see `abstopk_eval.evals.pooled`), so no further model pass is needed.

Scores, for each n:
- direction 1 (ablate the column-2 latents; target = column 1):
  S_SHIFT = (A_abl - A_base) / (A_oracle - A_base), where A_base / A_abl are the biased probe's accuracy on the
  balanced column-1 test set before / after ablation and A_oracle is the column-1 probe's accuracy there
  (0 when A_oracle - A_base < 0.001, as sae_bench does);
- direction 2: the same with the columns swapped (ablate column-1 latents, target = column 2);
- `scr_metric_threshold_n`: direction 1 if the biased probe is less accurate on column 1 than on column 2
  (it relies more on the attribute, so removing the attribute is the informative direction), else direction 2.
Metrics are averaged over the class pairs; per-pair values are in the details.

Intervals: 95% percentile bootstrap over the test texts (`abstopk_eval.evals.bootstrap`). A pair's column-1 and
column-2 test sets hold the same texts, so a unit is one test text of one pair; each unit keeps its 0/1
correctness under every condition (biased probe clean and after each ablation, the oracles), and under each of
`n_bootstrap` resamples (`resample_counts` over all pairs' test texts, seeded by `random_seed`; they depend only on
the texts, never on the SAE) every accuracy is the count-weighted mean and every score is recomputed. The latent
selection (made on the training texts) and each pair's chosen direction are kept fixed, so the interval is
conditional on the chosen latents: it measures the test-set noise, not the selection's. Each result keeps the
samples of `scr_metric_threshold_n` for every n (`bootstrap_samples`; two SAEs' samples pair, so the report can
difference them resample by resample) and the intervals of those and of `scr_dir1/dir2_threshold_n`
(`bootstrap_ci95`), in eval_result_unstructured. Not in sae_bench, which reports point values only.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from sae_bench.evals.scr_and_tpp.eval_output import ScrMetricCategories, ScrMetrics, ScrResultDetail
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
from abstopk_eval.evals.pooled import ablate, check_affine_decoder, decoder_rows, pooled_activations
from abstopk_eval.evals.probes import (
    SAE_BENCH_SPURIOUS_DATASETS,
    LinearProbe,
    card_dict,
    check_min_per_class,
    check_source,
    fit_task_probe,
    load_dataset,
    resampled_accuracy,
)
from abstopk_eval.evals.scr.eval_config import ScrEvalConfig
from abstopk_eval.evals.scr.eval_output import ScrEvalOutput
from abstopk_eval.evals.selection import scr_effects, select_top_n

EVAL_NAME = "scr"
MIN_SCORE_DENOMINATOR = 0.001  # sae_bench: an oracle no better than the biased probe gives score 0
BOOTSTRAP_UNIT = "test text of a class pair (one resample over every pair's test texts; latents and direction fixed)"


@dataclass
class _Set:
    rows: np.ndarray
    y: np.ndarray


@dataclass
class _Pair:
    """Rows (into the dataset) of one class pair's six probe sets and the attribute values used."""

    a: str
    b: str
    pos: str
    neg: str
    train: dict[str, _Set]
    test: dict[str, _Set]
    per_quadrant: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.a} / {self.b} x {self.pos} / {self.neg}"


def _two_sided(pos_rows: list[np.ndarray], neg_rows: list[np.ndarray]) -> _Set:
    pos, neg = np.concatenate(pos_rows), np.concatenate(neg_rows)
    return _Set(
        rows=np.concatenate([pos, neg]),
        y=np.concatenate([np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)]),
    )


def _attribute(ds: Any, cfg: ScrEvalConfig) -> tuple[str, np.ndarray, list[str]]:
    attributes = getattr(ds, "attributes", {}) or {}
    if cfg.spurious_attribute is not None:
        if cfg.spurious_attribute not in attributes:
            raise UserError(
                f"dataset {ds.name!r} has no attribute {cfg.spurious_attribute!r}; "
                f"it has: {', '.join(attributes) or 'none'}"
            )
        attr = cfg.spurious_attribute
    elif len(attributes) == 1:
        attr = next(iter(attributes))
    else:
        raise UserError(
            f"SCR needs a dataset with one binary attribute (or spurious_attribute set); "
            f"{ds.name!r} has: {', '.join(attributes) or 'none'}"
        )
    values = np.asarray(attributes[attr])
    names = list((getattr(ds, "attribute_names", {}) or {}).get(attr) or [str(v) for v in sorted(set(values.tolist()))])
    if len(values) != len(ds.texts):
        raise UserError(f"attribute {attr!r} of {ds.name!r} has {len(values)} values for {len(ds.texts)} texts")
    return attr, values, names


def _column2_order(cfg: ScrEvalConfig, names: list[str]) -> tuple[str, str]:
    if cfg.column2_values is not None:
        if len(cfg.column2_values) != 2 or any(v not in names for v in cfg.column2_values):
            raise UserError(f"column2_values must be two of {names}, got {cfg.column2_values}")
        return cfg.column2_values[0], cfg.column2_values[1]
    if len(names) != 2:
        raise UserError(f"SCR needs a binary attribute; it has values {names} (set column2_values)")
    pos = [n for n in names if n.lower().startswith("pos")]
    first = pos[0] if pos else names[0]
    return first, next(n for n in names if n != first)


def _pairs(cfg: ScrEvalConfig, ds: Any) -> list[tuple[str, str]]:
    if cfg.column1_pairs is not None:
        pairs = [tuple(p) for p in cfg.column1_pairs]
    elif cfg.dataset_source == "sae_bench":
        from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig

        lookup = ScrAndTppEvalConfig().column1_vals_lookup
        pairs = [tuple(map(str, p)) for p in lookup.get(ds.name, [])] or [
            tuple(ds.class_names[i : i + 2]) for i in range(0, len(ds.class_names) - 1, 2)
        ]
    else:
        pairs = [tuple(ds.class_names[i : i + 2]) for i in range(0, len(ds.class_names) - 1, 2)]
    for p in pairs:
        if len(p) != 2 or p[0] == p[1] or any(c not in ds.class_names for c in p):
            raise UserError(f"SCR class pair {list(p)} is not two distinct classes of {ds.name!r} ({ds.class_names})")
    if not pairs:
        raise UserError(f"SCR needs at least two classes in {ds.name!r}")
    return pairs  # type: ignore[return-value]


def build_pairs(ds: Any, cfg: ScrEvalConfig) -> tuple[str, list[_Pair]]:
    """Sample every class pair's quadrants (sae_bench's layout, shrunk proportionally where a quadrant is short)."""
    attr, values, names = _attribute(ds, cfg)
    pos_name, neg_name = _column2_order(cfg, names)
    pos_v, neg_v = names.index(pos_name), names.index(neg_name)
    labels = np.asarray(ds.labels)
    q, qt = cfg.train_set_size // 4, cfg.test_set_size // 4
    out = []
    for p_idx, (a, b) in enumerate(_pairs(cfg, ds)):
        ai, bi = ds.class_names.index(a), ds.class_names.index(b)
        rng = np.random.default_rng([cfg.random_seed, p_idx])
        cells = {
            (c, v): rng.permutation(np.flatnonzero((labels == c) & (values == v)))
            for c in (ai, bi)
            for v in (pos_v, neg_v)
        }
        diagonal = {(ai, pos_v), (bi, neg_v)}
        need = {cell: (2 if cell in diagonal else 1) * (q + qt) for cell in cells}
        scale = min(1.0, *(len(cells[c]) / need[c] for c in cells))
        qq, qqt = int(q * scale), int(qt * scale)
        if qq < cfg.min_per_quadrant or qqt < 2:
            short = ", ".join(f"({ds.class_names[c]}, {names[v]}) {len(cells[(c, v)])}" for c, v in cells)
            raise UserError(
                f"too few examples per quadrant in {ds.name!r} for SCR pair {a} / {b} "
                f"(need {cfg.min_per_quadrant} training texts per quadrant): {short}"
            )

        def part(cell, train: bool, double: bool = False, cells=cells, diagonal=diagonal, qq=qq, qqt=qqt):
            m = 2 if cell in diagonal else 1
            rows = cells[cell]
            tr, te = rows[: m * qq], rows[m * qq : m * qq + m * qqt]
            chosen = tr if train else te
            size = qq if train else qqt
            return chosen[: 2 * size] if double else chosen[:size]

        sets = {}
        for split in ("train", "test"):
            t = split == "train"
            sets[split] = {
                "column1": _two_sided(
                    [part((ai, pos_v), t), part((ai, neg_v), t)], [part((bi, pos_v), t), part((bi, neg_v), t)]
                ),
                "column2": _two_sided(
                    [part((ai, pos_v), t), part((bi, pos_v), t)], [part((ai, neg_v), t), part((bi, neg_v), t)]
                ),
                "biased": _two_sided([part((ai, pos_v), t, double=True)], [part((bi, neg_v), t, double=True)]),
            }
        out.append(
            _Pair(a=a, b=b, pos=pos_name, neg=neg_name, train=sets["train"], test=sets["test"], per_quadrant=(qq, qqt))
        )
    return attr, out


def _score(abl: float, base: float, oracle: float) -> float:
    return 0.0 if oracle - base < MIN_SCORE_DENOMINATOR else (abl - base) / (oracle - base)


def _score_samples(abl: np.ndarray, base: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """`_score` of every bootstrap resample (arrays [R])."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(oracle - base < MIN_SCORE_DENOMINATOR, 0.0, (abl - base) / (oracle - base))


def _pair_units(test: dict[str, _Set]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A pair's test texts (positions, in the column-1 test set's order) and their column-1 / column-2 labels: the
    two balanced test sets hold the same texts (the four quadrants' test parts), so one unit is one text."""
    units = test["column1"].rows
    where = {int(r): k for k, r in enumerate(units)}
    if len(where) != len(units) or sorted(where) != sorted(int(r) for r in test["column2"].rows):
        raise RuntimeError("SCR column-1 and column-2 test sets differ (they are built from the same quadrants)")
    y2 = np.empty(len(units), dtype=np.int64)
    y2[[where[int(r)] for r in test["column2"].rows]] = test["column2"].y
    return units, {"dir1": test["column1"].y, "dir2": y2}


def _effects(z: np.ndarray, s: _Set, probe: LinearProbe, rows_dec: np.ndarray) -> np.ndarray:
    """sae_bench SCR attribution, |mean difference x <probe weight, decoder row>| (invariant to negating a latent)."""
    return scr_effects(z[s.rows], s.y, probe.weight, rows_dec)


def run_scr(
    ctx: EvalContext,
    saes: dict[str, SAE],
    config: ScrEvalConfig | None = None,
    dataset: Any = None,
) -> dict[str, ScrEvalOutput]:
    """SCR results per SAE. `dataset` (a LabelledDataset with one binary attribute) overrides loading by name."""
    start = time.perf_counter()
    cfg = resolve_config(ScrEvalConfig, ctx, EVAL_NAME, config)
    check_source(cfg.dataset_source)
    if not cfg.n_values or min(cfg.n_values) < 1:
        raise UserError(f"scr n_values must be positive, got {cfg.n_values}")
    for sid, sae in saes.items():
        check_affine_decoder(sae, sid)
    if dataset is None:
        name = (
            cfg.dataset_name
            if cfg.dataset_source == "offline"
            else SAE_BENCH_SPURIOUS_DATASETS.get(cfg.dataset_name, cfg.dataset_name)
        )
        dataset = load_dataset(name, cfg.dataset_source, max_per_class=None, seed=cfg.random_seed, spurious=True)
    ds = dataset
    check_min_per_class(ds, cfg.min_per_quadrant)
    attr, pairs = build_pairs(ds, cfg)
    # record what was used
    cfg = dataclasses.replace(
        cfg,
        column1_pairs=[[p.a, p.b] for p in pairs],
        column2_values=[pairs[0].pos, pairs[0].neg],
        spurious_attribute=attr,
    )
    used = np.unique(np.concatenate([s.rows for p in pairs for sets in (p.train, p.test) for s in sets.values()]))
    position = np.full(len(ds.texts), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    texts = [ds.texts[i] for i in used]
    pooled = pooled_activations(
        ctx,
        saes,
        texts,
        dataset=f"{ds.name}[scr]",
        seed=cfg.random_seed,
        context_length=cfg.context_length,
        batch_tokens=cfg.llm_batch_tokens,
        sae_batch_tokens=cfg.sae_batch_tokens,
        desc=EVAL_NAME,
    )
    x = pooled.model.numpy().astype(np.float64)

    def at(s: _Set) -> _Set:
        return _Set(rows=position[s.rows], y=s.y)

    # probes on the model's pooled residual: shared by every SAE
    clean: list[dict[str, Any]] = []
    for p in pairs:
        train = {k: at(s) for k, s in p.train.items()}
        test = {k: at(s) for k, s in p.test.items()}
        probes = {
            k: fit_task_probe(x[s.rows], s.y, x[test[k].rows], test[k].y, cfg, seed=cfg.random_seed)
            for k, s in train.items()
        }
        accs = {
            "biased_probe_on_biased_test": probes["biased"].accuracy(x[test["biased"].rows], test["biased"].y),
            "column1_probe_on_column1_test": probes["column1"].accuracy(x[test["column1"].rows], test["column1"].y),
            "column2_probe_on_column2_test": probes["column2"].accuracy(x[test["column2"].rows], test["column2"].y),
            "biased_probe_on_column1_test": probes["biased"].accuracy(x[test["column1"].rows], test["column1"].y),
            "biased_probe_on_column2_test": probes["biased"].accuracy(x[test["column2"].rows], test["column2"].y),
        }
        units, ys = _pair_units(test)
        x_units = x[units]
        # per-text correctness of the clean probes on the pair's test texts (SAE-independent)
        hits = {
            "base": {d: probes["biased"].correct(x_units, ys[d]) for d in ys},
            "oracle": {
                "dir1": probes["column1"].correct(x_units, ys["dir1"]),
                "dir2": probes["column2"].correct(x_units, ys["dir2"]),
            },
        }
        clean.append(
            {"train": train, "test": test, "probes": probes, "accs": accs, "units": units, "ys": ys, "hits": hits}
        )
    unit_keys = [
        f"{ds.name}/{p.a}|{p.b}/{int(used[r])}/{ds.texts[used[r]]}" for p, c in zip(pairs, clean) for r in c["units"]
    ]
    counts = resample_counts(len(unit_keys), cfg.n_bootstrap, cfg.random_seed).numpy()
    offset = 0
    for c in clean:  # each pair's columns of the counts, and its clean accuracies under every resample
        c["counts"] = counts[:, offset : offset + len(c["units"])]
        offset += len(c["units"])
        c["resampled"] = {
            kind: {d: resampled_accuracy(c["counts"], h) for d, h in by_dir.items()}
            for kind, by_dir in c["hits"].items()
        }

    outputs = {}
    for sid, sae in tqdm(saes.items(), desc="scr: ablations", unit="sae"):
        z = pooled.latents[sid].numpy().astype(np.float64)
        rows_dec = decoder_rows(sae)
        per_pair, details, per_pair_samples = [], [], []
        for p, c in zip(pairs, clean):
            train, probes, accs = c["train"], c["probes"], c["accs"]
            x_units, z_units = x[c["units"]], z[c["units"]]
            # direction 1 ablates latents tied to column 2 (selected with the column-2 probe), and vice versa
            effects = {
                "dir1": _effects(z, train["column2"], probes["column2"], rows_dec),
                "dir2": _effects(z, train["column1"], probes["column1"], rows_dec),
            }
            base = {"dir1": accs["biased_probe_on_column1_test"], "dir2": accs["biased_probe_on_column2_test"]}
            oracle = {"dir1": accs["column1_probe_on_column1_test"], "dir2": accs["column2_probe_on_column2_test"]}
            chosen = "dir1" if base["dir1"] <= base["dir2"] else "dir2"
            scores: dict[str, float] = {}
            samples: dict[str, np.ndarray] = {}
            ablated_accs: dict[str, dict[int, float]] = {"dir1": {}, "dir2": {}}
            selected: dict[str, list[int]] = {}
            for d in ("dir1", "dir2"):
                selected[d] = [int(i) for i in select_top_n(effects[d], max(cfg.n_values))]
                for n in cfg.n_values:
                    x_abl = ablate(x_units, z_units, rows_dec, select_top_n(effects[d], n))
                    hits = probes["biased"].correct(x_abl, c["ys"][d])
                    acc = float(hits.mean())
                    ablated_accs[d][n] = acc
                    scores[f"scr_{d}_threshold_{n}"] = _score(acc, base[d], oracle[d])
                    samples[f"scr_{d}_threshold_{n}"] = _score_samples(
                        resampled_accuracy(c["counts"], hits), c["resampled"]["base"][d], c["resampled"]["oracle"][d]
                    )
            for n in cfg.n_values:
                scores[f"scr_metric_threshold_{n}"] = scores[f"scr_{chosen}_threshold_{n}"]
                samples[f"scr_metric_threshold_{n}"] = samples[f"scr_{chosen}_threshold_{n}"]
            per_pair.append(scores)
            per_pair_samples.append(samples)
            known = {f.name for f in fields(ScrResultDetail)}
            details.append(
                ScrResultDetail(dataset_name=f"{ds.name}: {p.label}", **{k: v for k, v in scores.items() if k in known})
            )
            c.setdefault("records", {})[sid] = {
                "pair": {"column1": [p.a, p.b], "column2": [p.pos, p.neg], "attribute": attr},
                "biased_set": f"({p.a}, {p.pos}) vs ({p.b}, {p.neg})",
                "dir1": f"target {p.a} vs {p.b}; ablate the {attr} latents (selected with the {p.pos} / {p.neg} probe)",
                "dir2": f"target {p.pos} vs {p.neg}; ablate the {p.a} / {p.b} latents "
                f"(selected with the {p.a} / {p.b} probe)",
                "chosen_direction": chosen,
                "texts_per_quadrant": {"train": p.per_quadrant[0], "test": p.per_quadrant[1]},
                "clean_accuracies": accs,
                "ablated_biased_probe_accuracy": ablated_accs,
                "selected_latents": selected,
                "scores": scores,
            }
        keys = per_pair[0].keys()
        metrics = {k: float(np.mean([pp[k] for pp in per_pair])) for k in keys}
        boot = {k: np.mean([pp[k] for pp in per_pair_samples], axis=0) for k in keys}
        headline = [f"scr_metric_threshold_{n}" for n in cfg.n_values]
        record = paired_samples(BOOTSTRAP_UNIT, unit_keys, cfg.random_seed, {k: boot[k] for k in headline})
        intervals = {
            **sample_intervals(record),
            **{k: list(percentile_interval(torch.as_tensor(v))) for k, v in boot.items() if k not in headline},
        }
        known = {f.name for f in fields(ScrMetrics)}
        outputs[sid] = ScrEvalOutput(
            eval_config=cfg,
            eval_result_metrics=ScrMetricCategories(
                scr_metrics=ScrMetrics(**{k: v for k, v in metrics.items() if k in known})
            ),
            eval_result_details=details,
            eval_result_unstructured={
                "pairs": [c["records"][sid] for c in clean],
                "metrics": metrics,
                "n_texts": len(used),
                "truncated": pooled.n_truncated,
                INTERVALS_KEY: intervals,
                PAIRED_SAMPLES_KEY: record,
                "bootstrap_unit": BOOTSTRAP_UNIT,
            },
            dataset_cards=[card_dict(ds)],
            **output_common(ctx, sid, sae),
        )
    seconds = time.perf_counter() - start
    for out in outputs.values():
        out.eval_result_unstructured["eval_seconds_all_saes"] = seconds  # type: ignore[index]
    return outputs


SCR = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=ScrEvalConfig,
        output_cls=ScrEvalOutput,
        description="Spurious correlation removal on domain x sentiment: ablate the latents tied to the spurious "
        "label, "
        "score the biased probe's shift toward the balanced-data oracle (both directions)",
        run=run_scr,
    )
)
