"""Sparse probing, SCR and TPP: end to end on a tiny model, sign-flip invariance, known answers, errors."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig

from abstopk_eval.data.labelled import DataCard, LabelledDataset
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bootstrap import (
    INTERVALS_KEY,
    PAIRED_SAMPLES_KEY,
    pairable,
    paired_difference_samples,
    sample_intervals,
)
from abstopk_eval.evals.context import EVALS, EvalContext
from abstopk_eval.evals.scr.eval_config import ScrEvalConfig
from abstopk_eval.evals.scr.main import run_scr
from abstopk_eval.evals.sparse_probing.eval_config import SparseProbingEvalConfig
from abstopk_eval.evals.sparse_probing.main import probe_unit_keys, run_sparse_probing
from abstopk_eval.evals.tpp.eval_config import TppEvalConfig
from abstopk_eval.evals.tpp.main import run_tpp
from abstopk_eval.models.adapter import ModelAdapter
from tests.helpers.context import make_eval_context
from tests.helpers.models import D_MODEL, tiny_llama
from tests.helpers.saes import negate_latent, random_sae
from tests.helpers.tokenizer import ALPHABET, tiny_tokenizer

SMALL = dict(train_per_class=20, test_per_class=12, min_per_class=10, k_values=[1, 2, 5], context_length=24)
SMALL_TPP = dict(train_per_class=20, test_per_class=12, min_per_class=10, n_values=[1, 2, 5], context_length=24)
SMALL_SCR = dict(train_set_size=80, test_set_size=40, min_per_quadrant=5, n_values=[1, 2, 5], context_length=24)

GROUPS = ["abcdef", "ghijkl", "mnopqr", "stuvwx"]


def _card(name: str, labels: list[int], classes: list[str]) -> DataCard:
    return DataCard(
        name=name,
        source="hand-built test data",
        license="CC0",
        derivation="random strings",
        counts={c: labels.count(i) for i, c in enumerate(classes)},
    )


def _random_texts(rng: np.random.Generator, letters: str, n: int, markers: str = "") -> list[str]:
    out = []
    for _ in range(n):
        length = int(rng.integers(8, 20))
        chars = [letters[j] for j in rng.integers(0, len(letters), length)]
        if markers:
            for pos in rng.integers(0, length, 4):
                chars[pos] = markers[int(rng.integers(0, len(markers)))]
        out.append("".join(chars))
    return out


def multiclass(name: str = "letters", n_classes: int = 3, per_class: int = 32, seed: int = 0) -> LabelledDataset:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for c in range(n_classes):
        texts += _random_texts(rng, GROUPS[c], per_class)
        labels += [c] * per_class
    classes = [f"group{c}" for c in range(n_classes)]
    return LabelledDataset(
        name=name, texts=texts, labels=labels, class_names=classes, card=_card(name, labels, classes)
    )


def two_label(name: str = "dom-sent", per_cell: int = 40, seed: int = 0) -> LabelledDataset:
    """Label = letter group (domain A / B); attribute sentiment = marker characters ('!' positive, '?' negative)."""
    rng = np.random.default_rng(seed)
    texts, labels, sent = [], [], []
    for d in range(2):
        for s, marker in enumerate("?!"):
            texts += _random_texts(rng, GROUPS[d], per_cell, markers=marker)
            labels += [d] * per_cell
            sent += [s] * per_cell
    classes = ["A", "B"]
    return LabelledDataset(
        name=name,
        texts=texts,
        labels=labels,
        class_names=classes,
        card=_card(name, labels, classes),
        attributes={"sentiment": sent},
        attribute_names={"sentiment": ["negative", "positive"]},
    )


# ---------------------------------------------------------------------------------------------- fixtures


class CountingAdapter(ModelAdapter):
    """ModelAdapter that counts model passes."""

    calls = 0

    def activations(self, *args, **kwargs):
        type(self).calls += 1
        return super().activations(*args, **kwargs)


@pytest.fixture(scope="module")
def adapter():
    model, tok = tiny_llama()
    return CountingAdapter(model, tok)


def _ctx(adapter, **options) -> EvalContext:
    return make_eval_context(
        adapter,
        layer=1,
        dataset="none",
        provenance={"model": "tiny", "versions": {"sae-lens": "test"}},
        eval_options=options,
    )


def _topk_sae(seed: int = 1):
    return random_sae("topk", seed=seed)


def _json_roundtrip(out) -> dict:
    return json.loads(json.dumps(asdict(out), default=str))


# ---------------------------------------------------------------------------------------------- end to end


def test_registered():
    assert {"sparse_probing", "scr", "tpp"} <= set(EVALS)


def test_all_three_end_to_end_share_one_model_pass_per_dataset(adapter):
    saes = {"abstopk": random_sae("abstopk"), "batch-abstopk": random_sae("batch-abstopk"), "topk": _topk_sae()}
    ds = {"letters": multiclass()}
    ctx = _ctx(adapter)
    CountingAdapter.calls = 0
    sp = run_sparse_probing(ctx, saes, SparseProbingEvalConfig(dataset_names=["letters"], **SMALL), datasets=ds)
    calls_after_probing = CountingAdapter.calls
    tpp = run_tpp(ctx, saes, TppEvalConfig(dataset_names=["letters"], **SMALL_TPP), datasets=ds)
    assert CountingAdapter.calls == calls_after_probing > 0  # TPP reused the memoised pass
    scr = run_scr(ctx, saes, ScrEvalConfig(**SMALL_SCR), dataset=two_label())
    for outputs, eval_type in ((sp, "sparse_probing"), (tpp, "tpp"), (scr, "scr")):
        assert set(outputs) == set(saes)
        for sid, out in outputs.items():
            d = _json_roundtrip(out)
            assert d["eval_type_id"] == eval_type
            assert d["provenance"]["sae_id"] == sid and d["provenance"]["model"] == "tiny"
            assert d["dataset_cards"] and d["dataset_cards"][0]["source"] == "hand-built test data"
            assert d["sae_cfg_dict"]["d_sae"] == 64
    m = _json_roundtrip(sp["abstopk"])["eval_result_metrics"]
    assert 0.5 < m["llm"]["llm_test_accuracy"] <= 1
    for k in (1, 2, 5):
        assert 0 <= m["sae"][f"sae_top_{k}_test_accuracy"] <= 1
    assert m["sae"]["sae_top_10_test_accuracy"] is None
    t = _json_roundtrip(tpp["topk"])["eval_result_metrics"]["tpp_metrics"]
    assert all(t[f"tpp_threshold_{n}_total_metric"] is not None for n in (2, 5))
    s = _json_roundtrip(scr["topk"])
    assert s["eval_config"]["column1_pairs"] == [["A", "B"]] and s["eval_config"]["column2_values"] == [
        "positive",
        "negative",
    ]
    assert s["eval_result_metrics"]["scr_metrics"]["scr_metric_threshold_2"] is not None
    assert s["eval_result_unstructured"]["pairs"][0]["biased_set"] == "(A, positive) vs (B, negative)"


def test_options_come_from_the_context(adapter):
    ctx = _ctx(adapter, sparse_probing={"dataset_names": ["letters"], **SMALL, "k_values": [1]})
    out = run_sparse_probing(ctx, {"s": _topk_sae()}, datasets={"letters": multiclass()})
    assert out["s"].eval_config.k_values == [1] and out["s"].eval_config.layer == 1
    given = run_sparse_probing(
        ctx,
        {"s": _topk_sae()},
        SparseProbingEvalConfig(dataset_names=["letters"], **SMALL),
        datasets={"letters": multiclass()},
    )
    assert (
        given["s"].eval_config.model_name == "tiny" and given["s"].eval_config.hook_name == "blocks.1.hook_resid_post"
    )
    with pytest.raises(UserError, match="unknown option"):
        run_sparse_probing(_ctx(adapter, sparse_probing={"nope": 1}), {"s": _topk_sae()})


# ---------------------------------------------------------------------------------------------- sign flips


def _flip_selected(sae, latents: list[int]):
    """Negate the first selected latent (so the flip touches what the metric uses)."""
    assert latents, "nothing selected"
    return negate_latent(sae, latents[0]), latents[0]


def _metrics_equal(a, b):
    da, db = asdict(a.eval_result_metrics), asdict(b.eval_result_metrics)
    for cat, values in da.items():
        for key, v in values.items():
            assert (v is None and db[cat][key] is None) or db[cat][key] == pytest.approx(v, abs=1e-9), (cat, key)


@pytest.mark.parametrize("kind", ["abstopk", "batch-abstopk"])
def test_sparse_probing_invariant_to_negating_a_latent(adapter, kind):
    sae = random_sae(kind)
    cfg = SparseProbingEvalConfig(dataset_names=["letters"], **SMALL)
    ds = {"letters": multiclass()}
    first = run_sparse_probing(_ctx(adapter), {"orig": sae}, cfg, datasets=ds)["orig"]
    flipped, j = _flip_selected(sae, first.eval_result_unstructured["top_latents"]["letters"]["group0"])
    out = run_sparse_probing(_ctx(adapter), {"orig": sae, "flip": flipped}, cfg, datasets=ds)
    _metrics_equal(out["orig"], out["flip"])
    assert out["flip"].eval_result_unstructured["top_latents"] == out["orig"].eval_result_unstructured["top_latents"]


@pytest.mark.parametrize("kind", ["abstopk", "batch-abstopk"])
def test_tpp_invariant_to_negating_a_latent(adapter, kind):
    sae = random_sae(kind)
    cfg = TppEvalConfig(dataset_names=["letters"], **SMALL_TPP)
    ds = {"letters": multiclass()}
    first = run_tpp(_ctx(adapter), {"orig": sae}, cfg, datasets=ds)["orig"]
    flipped, j = _flip_selected(sae, first.eval_result_unstructured["selected_latents"]["letters"]["group0"])
    out = run_tpp(_ctx(adapter), {"orig": sae, "flip": flipped}, cfg, datasets=ds)
    _metrics_equal(out["orig"], out["flip"])
    assert (
        out["flip"].eval_result_unstructured["selected_latents"]
        == out["orig"].eval_result_unstructured["selected_latents"]
    )


@pytest.mark.parametrize("kind", ["abstopk", "batch-abstopk"])
def test_scr_invariant_to_negating_a_latent(adapter, kind):
    sae = random_sae(kind)
    cfg = ScrEvalConfig(**SMALL_SCR)
    first = run_scr(_ctx(adapter), {"orig": sae}, cfg, dataset=two_label())["orig"]
    flipped, j = _flip_selected(sae, first.eval_result_unstructured["pairs"][0]["selected_latents"]["dir1"])
    out = run_scr(_ctx(adapter), {"orig": sae, "flip": flipped}, ScrEvalConfig(**SMALL_SCR), dataset=two_label())
    _metrics_equal(out["orig"], out["flip"])
    a, b = (out[k].eval_result_unstructured["pairs"][0] for k in ("orig", "flip"))
    assert a["selected_latents"] == b["selected_latents"]
    assert a["ablated_biased_probe_accuracy"] == b["ablated_biased_probe_accuracy"]


# ---------------------------------------------------------------------------------------------- known answers


class EmbeddingAdapter:
    """A stand-in model whose layer activation is a fixed embedding of each token (no mixing between positions).

    The i-th letter of every group in GROUPS shares one random vector plus `c_label` times its group's own
    direction `class_dirs[c]` (orthonormal), so texts drawn the same way from two groups differ on average only
    in the span of the class directions (groups 0 and 1 only along `u_label`). The markers '!' / '?' share a
    vector and differ only along `u_sent`. Every other direction carries no label information.
    """

    def __init__(self, c_label: float = 1.0, c_sent: float = 1.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.tokenizer = tiny_tokenizer()
        self.bos_token_id = self.tokenizer.bos_token_id
        basis, _ = torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=g))
        n = len(GROUPS)
        self.class_dirs = [basis[:, c] for c in range(n)]
        self.u_label = (self.class_dirs[0] - self.class_dirs[1]) / 2**0.5
        self.u_sent = basis[:, n]
        rest = basis[:, n + 1 :]
        table = torch.randn(64, D_MODEL - n - 1, generator=g) @ rest.T
        shared = torch.randn(len(GROUPS[0]), D_MODEL - n - 1, generator=g) @ rest.T
        idx = {ch: 3 + ALPHABET.index(ch) for ch in ALPHABET}
        for c, letters in enumerate(GROUPS):
            for i, ch in enumerate(letters):
                table[idx[ch]] = shared[i] + c_label * self.class_dirs[c]
        table[idx["?"]] = table[idx["!"]]
        table[idx["!"]] += c_sent * self.u_sent
        table[idx["?"]] -= c_sent * self.u_sent
        self.table = table

    def activations(self, input_ids, layer, attention_mask=None):
        return self.table[input_ids]


def _planted_sae(directions: list[torch.Tensor], seed: int = 3, scale: float = 50.0) -> AbsTopKSAE:
    """AbsTopK SAE whose first latents read (and write back) the given directions; the others are random but
    orthogonal to them, so they carry no information about the planted directions."""
    torch.manual_seed(seed)
    sae = AbsTopKSAE(AbsTopKSAEConfig(d_in=D_MODEL, d_sae=64, k=4))
    span = torch.stack(directions, 1)
    proj = torch.eye(D_MODEL) - span @ span.T
    with torch.no_grad():
        sae.W_enc.copy_(proj @ torch.randn(D_MODEL, 64) * 0.3)
        sae.W_dec.copy_(torch.randn(64, D_MODEL) * 0.03 @ proj)  # small random features
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        for i, u in enumerate(directions):
            sae.W_enc[:, i] = scale * u
            sae.W_dec[i] = u / scale
    return sae


def test_a_latent_on_the_label_direction_gives_high_top1_accuracy():
    adapter = EmbeddingAdapter()
    ds = {
        "pair": LabelledDataset(
            name="pair",
            texts=(
                _random_texts(np.random.default_rng(1), GROUPS[0], 40)
                + _random_texts(np.random.default_rng(1), GROUPS[1], 40)
            ),
            labels=[0] * 40 + [1] * 40,
            class_names=["A", "B"],
            card=_card("pair", [0] * 40 + [1] * 40, ["A", "B"]),
        )
    }
    saes = {"planted": _planted_sae([adapter.u_label]), "blind": _planted_sae([adapter.u_label])}
    with torch.no_grad():  # the same SAE without its label latent: every latent is orthogonal to u_label
        saes["blind"].W_enc[:, 0] = 0.0
    cfg = SparseProbingEvalConfig(dataset_names=["pair"], train_per_class=25, test_per_class=15, k_values=[1, 2])
    out = run_sparse_probing(_ctx(adapter), saes, cfg, datasets=ds)
    planted = out["planted"].eval_result_metrics.sae
    blind = out["blind"].eval_result_metrics.sae
    assert planted.sae_top_1_test_accuracy >= 0.95
    assert out["planted"].eval_result_unstructured["top_latents"]["pair"]["A"][0] == 0
    assert blind.sae_top_1_test_accuracy <= 0.8
    assert out["planted"].eval_result_metrics.llm.llm_test_accuracy >= 0.95


def _planted_scr_config() -> ScrEvalConfig:
    """SCR on the planted embedding model with the deterministic sklearn probe."""
    return ScrEvalConfig(
        train_set_size=120,
        test_set_size=60,
        min_per_quadrant=5,
        n_values=[1, 2],
        context_length=32,
        probe_recipe="sklearn",
    )


def test_ablating_the_spurious_latent_raises_scr():
    adapter = EmbeddingAdapter(c_label=0.3, c_sent=1.0)
    saes = {
        "planted": _planted_sae([adapter.u_sent, adapter.u_label]),
        "blind": _planted_sae([adapter.u_sent, adapter.u_label]),
    }
    with torch.no_grad():
        saes["blind"].W_enc[:, :2] = 0.0
    # the known-answer checks test the SCR mechanics with the deterministic sklearn probe (the sae_bench recipe's
    # 160 AdamW steps do not converge on this weak planted label; it is tested on its own below)
    cfg = _planted_scr_config()
    out = run_scr(_ctx(adapter), saes, cfg, dataset=two_label(per_cell=60))
    rec = out["planted"].eval_result_unstructured["pairs"][0]
    clean = rec["clean_accuracies"]
    assert clean["biased_probe_on_column1_test"] < clean["column1_probe_on_column1_test"] - 0.1  # the bias hurts
    assert rec["chosen_direction"] == "dir1" and rec["selected_latents"]["dir1"][0] == 0  # the sentiment latent
    planted = out["planted"].eval_result_unstructured["metrics"]  # every n (the schema lists n in 2, 5, ... only)
    assert planted["scr_dir1_threshold_1"] > 0.8 and planted["scr_metric_threshold_1"] > 0.8
    assert out["planted"].eval_result_metrics.scr_metrics.scr_dir1_threshold_2 > 0.5
    blind = out["blind"].eval_result_unstructured["metrics"]
    assert abs(blind["scr_dir1_threshold_1"]) < 0.2 and abs(blind["scr_dir1_threshold_2"]) < 0.2


def test_tpp_planted_latent_hurts_only_its_own_class():
    adapter = EmbeddingAdapter()
    ds = {"three": multiclass("three", n_classes=3, per_class=40, seed=2)}
    saes = {"planted": _planted_sae(adapter.class_dirs[:3]), "blind": _planted_sae(adapter.class_dirs[:3])}
    with torch.no_grad():
        saes["blind"].W_enc[:, :3] = 0.0
    cfg = TppEvalConfig(
        dataset_names=["three"], train_per_class=25, test_per_class=15, n_values=[1, 2], probe_recipe="sklearn"
    )
    out = run_tpp(_ctx(adapter), saes, cfg, datasets=ds)
    planted = out["planted"].eval_result_unstructured
    for c in range(3):
        assert planted["selected_latents"]["three"][f"group{c}"][0] == c  # each class's own latent first
        per_class = planted["per_class"]["three"][f"group{c}"]
        assert per_class["tpp_threshold_1_intended_diff_only"] > 0.3
        assert abs(per_class["tpp_threshold_1_unintended_diff_only"]) < 0.1
    assert planted["metrics"]["tpp_threshold_1_total_metric"] > 0.3
    assert out["planted"].eval_result_metrics.tpp_metrics.tpp_threshold_2_total_metric > 0.3
    assert abs(out["blind"].eval_result_unstructured["metrics"]["tpp_threshold_1_total_metric"]) < 0.1


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_dataset_is_a_user_error(adapter):
    with pytest.raises(UserError, match="no-such-dataset"):
        run_sparse_probing(
            _ctx(adapter), {"s": _topk_sae()}, SparseProbingEvalConfig(dataset_names=["no-such-dataset"])
        )
    with pytest.raises(UserError, match="no-such-dataset"):
        run_tpp(_ctx(adapter), {"s": _topk_sae()}, TppEvalConfig(dataset_names=["no-such-dataset"]))
    with pytest.raises(UserError, match="no-such-dataset"):
        run_scr(_ctx(adapter), {"s": _topk_sae()}, ScrEvalConfig(dataset_name="no-such-dataset"))


def test_too_few_examples_is_a_user_error(adapter):
    tiny = {"letters": multiclass(per_class=6)}
    with pytest.raises(UserError, match="too few|only"):
        run_sparse_probing(
            _ctx(adapter),
            {"s": _topk_sae()},
            SparseProbingEvalConfig(dataset_names=["letters"], **SMALL),
            datasets=tiny,
        )
    with pytest.raises(UserError, match="too few|only"):
        run_tpp(_ctx(adapter), {"s": _topk_sae()}, TppEvalConfig(dataset_names=["letters"], **SMALL_TPP), datasets=tiny)
    with pytest.raises(UserError, match="too few"):
        run_scr(
            _ctx(adapter),
            {"s": _topk_sae()},
            ScrEvalConfig(**{**SMALL_SCR, "min_per_quadrant": 30}),
            dataset=two_label(per_cell=40),
        )
    no_attr = multiclass(n_classes=2)
    with pytest.raises(UserError, match="attribute"):
        run_scr(_ctx(adapter), {"s": _topk_sae()}, ScrEvalConfig(**SMALL_SCR), dataset=no_attr)


def test_bad_source_and_unreachable_hub_are_user_errors(adapter, monkeypatch):
    with pytest.raises(UserError, match="dataset_source"):
        run_sparse_probing(
            _ctx(adapter),
            {"s": _topk_sae()},
            SparseProbingEvalConfig(dataset_names=["sentiment"], dataset_source="web"),
        )
    from sae_bench.sae_bench_utils import dataset_utils

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'canrager/amazon_reviews_mcauley_1and5' on the Hub\n(LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(dataset_utils, "get_multi_label_train_test_data", offline)
    with pytest.raises(UserError) as err:
        run_sparse_probing(
            _ctx(adapter),
            {"s": _topk_sae()},
            SparseProbingEvalConfig(dataset_names=["sentiment"], dataset_source="sae_bench"),
        )
    assert "\n" not in str(err.value) and "Hugging Face hub" in str(err.value)
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as err:
        run_scr(_ctx(adapter), {"s": _topk_sae()}, ScrEvalConfig(dataset_source="sae_bench"))
    assert "\n" not in str(err.value) and "amazon_reviews" in str(err.value)


def test_sparse_probing_accuracy_interval_resamples_each_task():
    import numpy as np

    from abstopk_eval.evals.sparse_probing.main import bootstrap_accuracy_intervals

    rng = np.random.default_rng(0)
    correct = {
        "d1": {
            "sae_top_1_test_accuracy": {
                "a": (rng.random(60) < 0.7).astype(float),
                "b": (rng.random(60) < 0.9).astype(float),
            }
        },
        "d2": {"sae_top_1_test_accuracy": {"a": (rng.random(40) < 0.6).astype(float)}},
    }
    point = np.mean(
        [
            np.mean([v.mean() for v in correct["d1"]["sae_top_1_test_accuracy"].values()]),
            correct["d2"]["sae_top_1_test_accuracy"]["a"].mean(),
        ]
    )
    lo, hi = bootstrap_accuracy_intervals(correct, n_resamples=500, seed=0)["sae_top_1_test_accuracy"]
    assert lo < point < hi and 0.02 < hi - lo < 0.3
    assert bootstrap_accuracy_intervals(correct, n_resamples=500, seed=0)["sae_top_1_test_accuracy"] == [lo, hi]
    perfect = {"d1": {"sae_top_1_test_accuracy": {"a": np.ones(30)}}}
    assert bootstrap_accuracy_intervals(perfect, n_resamples=200, seed=0)["sae_top_1_test_accuracy"] == [1.0, 1.0]


def test_sparse_probing_bootstrap_samples_pair_across_saes(adapter):
    """One call, four SAEs: the samples of two SAEs pair, the same SAE twice differs by exactly 0, negating a
    selected signed latent changes no sample, `bootstrap_ci95` is `sample_intervals` of the record and holds the
    point estimate."""
    sae = random_sae("abstopk")
    cfg = SparseProbingEvalConfig(dataset_names=["letters"], **SMALL, n_bootstrap=200)
    ds = {"letters": multiclass()}
    first = run_sparse_probing(_ctx(adapter), {"a": sae}, cfg, datasets=ds)["a"]
    flipped, _ = _flip_selected(sae, first.eval_result_unstructured["top_latents"]["letters"]["group0"])
    saes = {"a": sae, "b": _topk_sae(), "a again": sae, "a flipped": flipped}
    out = run_sparse_probing(_ctx(adapter), saes, cfg, datasets=ds)
    records = {sid: o.eval_result_unstructured[PAIRED_SAMPLES_KEY] for sid, o in out.items()}
    metrics = [f"sae_top_{k}_test_accuracy" for k in SMALL["k_values"]]
    rec = records["a"]
    assert sorted(rec["samples"]) == sorted(metrics) and rec["seed"] == cfg.random_seed
    assert rec["n_units"] == 3 * 2 * SMALL["test_per_class"]  # three one-vs-rest tasks, positives and negatives
    for sid, o in out.items():
        intervals = o.eval_result_unstructured[INTERVALS_KEY]
        assert intervals == sample_intervals(records[sid])
        assert set(intervals) == set(metrics)
        for metric, (low, high) in intervals.items():
            assert len(records[sid]["samples"][metric]) == 200
            assert low <= getattr(o.eval_result_metrics.sae, metric) <= high
    for metric in metrics:
        assert pairable(records["a"], records["b"], metric)
        assert np.all(paired_difference_samples(records["a"], records["a again"], metric) == 0.0)
        assert records["a flipped"]["samples"][metric] == records["a"]["samples"][metric]
    assert records["a flipped"] == records["a"]


def test_probe_unit_keys_name_every_test_text_in_resampling_order():
    rows = {"d2": {"x": np.array([4, 1])}, "d1": {"b": np.array([0]), "a": np.array([3, 2])}}
    assert probe_unit_keys(rows) == ["d1/a/3", "d1/a/2", "d1/b/0", "d2/x/4", "d2/x/1"]


# ---------------------------------------------------------------------------------------------- two-signed latents


def _token_latent(adapter: EmbeddingAdapter, sae, chars: str, j: int) -> list[float]:
    """Latent j at the embedding of each character (the planted latents read one token at a time)."""
    with torch.no_grad():
        return sae.encode(adapter.table[[3 + ALPHABET.index(ch) for ch in chars]])[:, j].tolist()


@pytest.mark.parametrize("rest", [1.0, 1.25])
def test_tpp_chooses_a_latent_that_carries_the_class_in_its_sign_first(rest):
    """Latent 0 is +a on class-0 tokens and -rest*a on the others: the class is in its sign, not in |z|. TPP's
    earlier rule (mean |z| larger on the class) dropped it; the oriented rule picks it first, in either sign."""
    adapter = EmbeddingAdapter()
    c = adapter.class_dirs
    u = c[0] - rest * (c[1] + c[2])
    sae = _planted_sae([u / u.norm()])
    z = _token_latent(adapter, sae, GROUPS[0][0] + GROUPS[1][0] + GROUPS[2][0], 0)
    assert z[0] > 0 > z[1] and z[2] == pytest.approx(z[1]) and abs(z[1]) == pytest.approx(rest * z[0], rel=1e-4)
    ds = {"three": multiclass("three", n_classes=3, per_class=40, seed=2)}
    cfg = TppEvalConfig(
        dataset_names=["three"], train_per_class=25, test_per_class=15, n_values=[1, 2], probe_recipe="sklearn"
    )
    out = run_tpp(_ctx(adapter), {"planted": sae, "flipped": negate_latent(sae, 0)}, cfg, datasets=ds)
    for sid in out:
        assert out[sid].eval_result_unstructured["selected_latents"]["three"]["group0"][0] == 0, sid
    _metrics_equal(out["planted"], out["flipped"])


def test_scr_chooses_the_two_signed_attribute_latent_first_in_either_sign():
    """Latent 0 is +a on '!' and -a on '?' tokens (the attribute in its sign); SCR's |effect| picks it first."""
    adapter = EmbeddingAdapter(c_label=0.3, c_sent=1.0)
    sae = _planted_sae([adapter.u_sent, adapter.u_label])
    plus, minus = _token_latent(adapter, sae, "!?", 0)
    assert plus > 0 > minus and minus == pytest.approx(-plus)
    cfg = ScrEvalConfig(
        train_set_size=120,
        test_set_size=60,
        min_per_quadrant=5,
        n_values=[1],
        context_length=32,
        probe_recipe="sklearn",
    )
    out = run_scr(
        _ctx(adapter), {"planted": sae, "flipped": negate_latent(sae, 0)}, cfg, dataset=two_label(per_cell=60)
    )
    for sid in out:
        assert out[sid].eval_result_unstructured["pairs"][0]["selected_latents"]["dir1"][0] == 0, sid
    _metrics_equal(out["planted"], out["flipped"])


def test_sparse_probing_ranks_a_two_signed_latent_above_a_one_signed_one():
    """Latent 0 is +a on class A and -a on class B; latent 1 fires (+b, b > a) on class A only. By |mean
    difference| (2a against b) the two-signed latent ranks first, in either sign."""
    adapter = EmbeddingAdapter()
    c0, c1 = adapter.class_dirs[0], adapter.class_dirs[1]
    sae = _planted_sae([c0, c1])
    with torch.no_grad():
        sae.W_enc[:, 0], sae.W_dec[0] = 50.0 * adapter.u_label, adapter.u_label / 50.0
        sae.W_enc[:, 1], sae.W_dec[1] = 50.0 * c0, c0 / 50.0
    two, one = (_token_latent(adapter, sae, GROUPS[0][0] + GROUPS[1][0], j) for j in (0, 1))
    assert two[0] > 0 > two[1] and one[0] > two[0] and one[1] == 0.0
    texts = _random_texts(np.random.default_rng(1), GROUPS[0], 40) + _random_texts(
        np.random.default_rng(2), GROUPS[1], 40
    )
    labels = [0] * 40 + [1] * 40
    ds = {"pair": LabelledDataset("pair", texts, labels, ["A", "B"], card=_card("pair", labels, ["A", "B"]))}
    cfg = SparseProbingEvalConfig(dataset_names=["pair"], train_per_class=25, test_per_class=15, k_values=[1, 2])
    out = run_sparse_probing(_ctx(adapter), {"planted": sae, "flipped": negate_latent(sae, 0)}, cfg, datasets=ds)
    for sid in out:
        assert out[sid].eval_result_unstructured["top_latents"]["pair"]["A"][:2] == [0, 1], sid


# ---------------------------------------------------------------------------------------------- paired bootstrap

HEADLINE = {
    "scr": lambda n: f"scr_metric_threshold_{n}",
    "tpp": lambda n: f"tpp_threshold_{n}_total_metric",
}
INFORMATIVE_SEED = {"scr": 0, "tpp": 1}
"""A random AbsTopK SAE whose headline scores vary over the resamples (SCR's of seed 1 on the embedding model and
TPP's total of seed 0 on the tiny model are 0 in every resample, which would make the checks vacuous)."""


def _run_task(task: str, adapter, saes: dict, **cfg) -> dict:
    """SCR on the embedding model with the sklearn probe (scores away from 0); TPP on the tiny model."""
    if task == "scr":
        scr_cfg = ScrEvalConfig(**{**SMALL_SCR, "probe_recipe": "sklearn", **cfg})
        return run_scr(_ctx(EmbeddingAdapter(c_label=0.3, c_sent=1.0)), saes, scr_cfg, dataset=two_label())
    tpp_cfg = TppEvalConfig(dataset_names=["letters"], **{**SMALL_TPP, **cfg})
    return run_tpp(_ctx(adapter), saes, tpp_cfg, datasets={"letters": multiclass()})


def _selected(task: str, out) -> list[int]:
    u = out.eval_result_unstructured
    return u["pairs"][0]["selected_latents"]["dir1"] if task == "scr" else u["selected_latents"]["letters"]["group0"]


@pytest.mark.parametrize("task", ["scr", "tpp"])
def test_two_saes_get_pairable_samples_whose_intervals_hold_the_point(adapter, task):
    saes = {"a": random_sae("abstopk", seed=0), "b": random_sae("abstopk", seed=1)}
    out = _run_task(task, adapter, saes, n_bootstrap=200)
    records = {sid: _json_roundtrip(o)["eval_result_unstructured"][PAIRED_SAMPLES_KEY] for sid, o in out.items()}
    assert records["a"]["units_digest"] == records["b"]["units_digest"] and records["a"]["seed"] == 42
    u = out["a"].eval_result_unstructured  # a unit is a test text: SCR, four quadrants of each pair; TPP, the split's
    n_test = 4 * u["pairs"][0]["texts_per_quadrant"]["test"] if task == "scr" else u["n_texts"]["letters"]["test"]
    assert records["a"]["n_units"] == n_test
    widths = []
    for n in (1, 2, 5):
        metric = HEADLINE[task](n)
        assert pairable(records["a"], records["b"], metric)
        for sid, o in out.items():
            assert len(records[sid]["samples"][metric]) == 200
            lo, hi = o.eval_result_unstructured[INTERVALS_KEY][metric]
            point = o.eval_result_unstructured["metrics"][metric]
            assert lo <= point <= hi, (sid, metric)
            widths.append(hi - lo)
    assert max(widths) > 0.05  # not vacuous: some score moves over the resamples
    extra = "scr_dir2_threshold_5" if task == "scr" else "tpp_threshold_5_intended_diff_only"
    assert extra in out["a"].eval_result_unstructured[INTERVALS_KEY]
    # the resamples depend on the texts only: evaluating one SAE alone draws the same samples
    alone = _run_task(task, adapter, {"b": saes["b"]}, n_bootstrap=200)["b"].eval_result_unstructured
    assert alone[PAIRED_SAMPLES_KEY] == out["b"].eval_result_unstructured[PAIRED_SAMPLES_KEY]


@pytest.mark.parametrize("task", ["scr", "tpp"])
def test_a_copy_differs_by_exactly_zero_and_a_sign_flip_changes_no_sample(adapter, task):
    sae = random_sae("abstopk", seed=INFORMATIVE_SEED[task])
    out = _run_task(task, adapter, {"orig": sae, "copy": copy.deepcopy(sae)})
    a, b = (out[k].eval_result_unstructured[PAIRED_SAMPLES_KEY] for k in ("orig", "copy"))
    assert any(len(set(a["samples"][HEADLINE[task](n)])) > 1 for n in (1, 2, 5))  # not vacuous
    for n in (1, 2, 5):
        assert np.all(paired_difference_samples(a, b, HEADLINE[task](n)) == 0.0)
    flipped, _ = _flip_selected(sae, _selected(task, out["orig"]))
    again = _run_task(task, adapter, {"orig": sae, "flip": flipped})
    assert _selected(task, again["flip"]) == _selected(task, again["orig"])
    assert again["flip"].eval_result_unstructured[PAIRED_SAMPLES_KEY] == a
    assert again["flip"].eval_result_unstructured[INTERVALS_KEY] == out["orig"].eval_result_unstructured[INTERVALS_KEY]


def _paired_interval(out, better: str, worse: str, metric: str) -> tuple[float, float]:
    a, b = (out[k].eval_result_unstructured[PAIRED_SAMPLES_KEY] for k in (better, worse))
    lo, hi = np.percentile(paired_difference_samples(a, b, metric), [2.5, 97.5])
    return float(lo), float(hi)


def test_planted_scr_latent_beats_a_blind_sae_beyond_the_paired_noise():
    adapter = EmbeddingAdapter(c_label=0.3, c_sent=1.0)
    saes = {"planted": _planted_sae([adapter.u_sent, adapter.u_label])}
    saes["blind"] = copy.deepcopy(saes["planted"])
    with torch.no_grad():
        saes["blind"].W_enc[:, :2] = 0.0
    cfg = _planted_scr_config()
    out = run_scr(_ctx(adapter), saes, cfg, dataset=two_label(per_cell=60))
    for metric in ("scr_metric_threshold_1", "scr_metric_threshold_2"):
        lo, hi = _paired_interval(out, "planted", "blind", metric)
        diff = (
            out["planted"].eval_result_unstructured["metrics"][metric]
            - out["blind"].eval_result_unstructured["metrics"][metric]
        )
        assert 0 < lo <= diff <= hi, metric


def test_planted_tpp_latents_beat_a_blind_sae_beyond_the_paired_noise():
    adapter = EmbeddingAdapter()
    ds = {"three": multiclass("three", n_classes=3, per_class=40, seed=2)}
    saes = {"planted": _planted_sae(adapter.class_dirs[:3])}
    saes["blind"] = copy.deepcopy(saes["planted"])
    with torch.no_grad():
        saes["blind"].W_enc[:, :3] = 0.0
    cfg = TppEvalConfig(
        dataset_names=["three"], train_per_class=25, test_per_class=15, n_values=[1, 2], probe_recipe="sklearn"
    )
    out = run_tpp(_ctx(adapter), saes, cfg, datasets=ds)
    for metric in ("tpp_threshold_1_total_metric", "tpp_threshold_2_total_metric"):
        lo, hi = _paired_interval(out, "planted", "blind", metric)
        diff = (
            out["planted"].eval_result_unstructured["metrics"][metric]
            - out["blind"].eval_result_unstructured["metrics"][metric]
        )
        assert 0 < lo <= diff <= hi, metric


@pytest.mark.parametrize("task", ["scr", "tpp"])
def test_n_bootstrap_at_its_default_keeps_earlier_results_current(task):
    from abstopk_eval.evals.options import config_identity

    assert "n_bootstrap" not in config_identity(task)  # an added field, out of the identity at its default
    assert config_identity(task, {"n_bootstrap": 200})["n_bootstrap"] == 200
