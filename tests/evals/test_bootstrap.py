"""The bootstrap helpers against an explicit resample-and-recompute loop, and the core intervals' sanity."""

from __future__ import annotations

import torch

from abstopk_eval.evals.bootstrap import block_sums, percentile_interval, resample_counts, weighted_sums


def test_counts_are_resamples_with_replacement():
    counts = resample_counts(7, n_resamples=50, seed=3)
    assert counts.shape == (50, 7)
    assert torch.all(counts.sum(1) == 7)
    assert torch.equal(counts, resample_counts(7, n_resamples=50, seed=3))  # same seed, same resamples (paired)
    assert not torch.equal(counts, resample_counts(7, n_resamples=50, seed=4))


def test_weighted_ratio_matches_explicit_resampling():
    gen = torch.Generator().manual_seed(0)
    numer, denom = (
        torch.rand(40, generator=gen, dtype=torch.float64),
        torch.rand(40, generator=gen, dtype=torch.float64) + 1,
    )
    picks = torch.randint(40, (200, 40), generator=gen)
    counts = torch.zeros(200, 40, dtype=torch.float64).scatter_add_(1, picks, torch.ones(200, 40, dtype=torch.float64))
    fast = weighted_sums(counts, numer) / weighted_sums(counts, denom)
    slow = torch.stack([numer[p].sum() / denom[p].sum() for p in picks])
    torch.testing.assert_close(fast, slow)
    lo, hi = percentile_interval(fast)
    assert lo < float(numer.sum() / denom.sum()) < hi


def test_interval_narrows_with_more_data():
    gen = torch.Generator().manual_seed(1)
    widths = []
    for n in (20, 2000):
        values = torch.randn(n, generator=gen, dtype=torch.float64)
        lo, hi = percentile_interval(weighted_sums(resample_counts(n, 500), values) / n)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # ~ 1 / sqrt(n): a factor of 10 expected


def test_block_sums():
    values = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    torch.testing.assert_close(
        block_sums(values, 2), torch.tensor([[2.0, 4.0], [10.0, 12.0], [8.0, 9.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(block_sums(torch.ones(5), 5), torch.tensor([5.0], dtype=torch.float64))


def test_core_intervals_bracket_the_point_estimates():
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from abstopk_eval.evals.context import EvalContext
    from abstopk_eval.evals.core.main import run_core
    from abstopk_eval.models.adapter import ModelAdapter
    from tests.helpers.models import D_MODEL, VOCAB, tiny_llama

    model, tok = tiny_llama()
    adapter = ModelAdapter(model, tok)
    tokens = torch.randint(3, VOCAB, (6, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = tok.bos_token_id
    acts = adapter.activations(tokens, 1)[:, 1:].reshape(-1, D_MODEL)
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=32, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ctx = EvalContext(
        adapter=adapter,
        model_key="tiny",
        model_name="tiny",
        layer=1,
        eval_tokens=tokens,
        heldout_activations=lambda: acts,
        dataset="random tokens",
    )
    metrics = run_core(ctx, {"sae": sae})["sae"].eval_result_metrics
    boot = metrics.bootstrap_ci95
    assert boot.n_sequences == 6 and boot.n_row_blocks == 6  # 11 rows per sequence after BOS
    # loss recovered is left out of the bracket check: on a random tiny model CE_zero - CE_clean is near 0, so
    # its resampled ratio is heavy-tailed and a percentile interval need not contain the full-sample value
    assert boot.loss_recovered_low < boot.loss_recovered_high
    point = {
        "nmse": metrics.normalised_reconstruction.nmse,
        "fvu": metrics.normalised_reconstruction.fvu,
        "ce_loss_with_sae": metrics.model_performance_preservation.ce_loss_with_sae,
        "kl_div_with_sae": metrics.model_behavior_preservation.kl_div_with_sae,
    }
    for name, value in point.items():
        lo, hi = getattr(boot, f"{name}_low"), getattr(boot, f"{name}_high")
        assert lo < hi, name
        assert lo <= value * (1 + 1e-9) and value <= hi * (1 + 1e-9), (name, lo, value, hi)
    ctx.eval_options = {"core": {"n_bootstrap": 200, "bootstrap_seed": 5}}
    other = run_core(ctx, {"sae": sae})["sae"].eval_result_metrics.bootstrap_ci95
    assert other.n_resamples == 200 and other.nmse_low != boot.nmse_low


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
