"""Core's conventions and inference options on tiny SAEs: sae_bench's zero-ablation and field formulas, the paper
code's batch top-(k*B) selection at inference, and the inference-k sweep of one trained SAE."""

from __future__ import annotations

import pytest
import torch

from abstopk_eval.errors import UserError
from abstopk_eval.evals.core.main import SAE_BENCH_BATCH_PROMPTS, run_core
from abstopk_eval.evals.options import parse_eval_options
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.provenance import SaeProvenance
from tests.helpers.context import make_eval_context, random_tokens
from tests.helpers.models import D_MODEL, tiny_llama
from tests.helpers.saes import random_sae

N_SEQ, SEQ = 20, 9  # 20 sequences of 8 rows: one full sae_bench batch of 16 sequences and a partial one


@pytest.fixture(scope="module")
def setting():
    model, tok = tiny_llama()
    adapter = ModelAdapter(model, tok)
    tokens = random_tokens(N_SEQ, SEQ, bos_token_id=tok.bos_token_id)
    acts = adapter.activations(tokens, 1)[:, 1:].reshape(-1, D_MODEL)
    return adapter, tokens, acts


def _ctx(setting, **options):
    adapter, tokens, acts = setting
    return make_eval_context(
        adapter,
        layer=1,
        eval_tokens=tokens,
        heldout_activations=acts,
        eval_options={"core": options} if options else {},
        sae_provenance={
            "batchtopk": SaeProvenance("batchtopk", variant="batchtopk", k=4),
            "batch-abstopk": SaeProvenance("batch-abstopk", variant="batch-abstopk", k=4),
        },
    )


def _sae_bench_formulas(sae, acts: torch.Tensor) -> dict[str, float]:
    """sae_bench.evals.core.main.get_sparsity_and_variance_metrics' formulas, on its batches of 16 sequences."""
    rows = SAE_BENCH_BATCH_PROMPTS * (SEQ - 1)
    legacy, mse, sumsq, actsq, resid, ratio, rrb = [], [], [], [], [], [], []
    with torch.no_grad():
        for g in range(0, len(acts), rows):
            x = acts[g : g + rows]
            x_hat = sae.decode(sae.encode(x))
            rss = (x - x_hat).pow(2).sum(-1)
            legacy.append(1 - rss / (x - x.mean(0)).pow(2).sum(-1))
            mse.append(rss / len(x))
            sumsq.append(x.pow(2).sum(-1).mean(0))
            actsq.append(x.pow(2).mean(0))
            resid.append(rss.mean(0))
            ratio.append(x_hat.norm(dim=-1) / x.norm(dim=-1))
            rrb.append((x_hat.norm(dim=-1) ** 2).mean() / (x * x_hat).sum(-1).mean())
    total_variance = torch.stack(sumsq).mean(0) - torch.cat(actsq).mean(0) ** 2
    return {
        "explained_variance_legacy": float(torch.cat(legacy).mean()),
        "mse": float(torch.cat(mse).mean()),
        "explained_variance": float(1 - torch.stack(resid).mean(0) / total_variance),
        "l2_ratio": float(torch.cat(ratio).mean()),
        "relative_reconstruction_bias": float(torch.stack(rrb).mean()),
    }


def test_sae_bench_named_fields_follow_sae_bench_formulas(setting):
    _, tokens, acts = setting
    sae = random_sae("topk", d_sae=32)
    metrics = run_core(_ctx(setting), {"sae": sae})["sae"].eval_result_metrics
    quality = metrics.reconstruction_quality
    for name, value in _sae_bench_formulas(sae, acts).items():
        where = metrics.shrinkage if name in ("l2_ratio", "relative_reconstruction_bias") else quality
        assert getattr(where, name) == pytest.approx(value, rel=1e-5), name
    recon = metrics.normalised_reconstruction
    assert quality.explained_variance_legacy != pytest.approx(1 - recon.nmse, rel=1e-3)  # no longer 1 - nMSE
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(acts))
    assert recon.mse_per_element == pytest.approx(float((acts - x_hat).pow(2).mean()), rel=1e-5)


def test_zero_ablation_zeroes_every_position_as_sae_bench(setting):
    adapter, tokens, _ = setting
    metrics = run_core(_ctx(setting), {"sae": random_sae("topk", d_sae=32)})["sae"].eval_result_metrics
    with torch.no_grad():
        logits = adapter.forward_with_replacement(tokens, 1, torch.zeros_like)
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    ce_all_zeroed = float(-logp.gather(-1, tokens[:, 1:, None]).mean())
    perf, recon = metrics.model_performance_preservation, metrics.normalised_reconstruction
    assert perf.ce_loss_with_ablation == pytest.approx(ce_all_zeroed, rel=1e-5)
    assert recon.ce_loss_with_ablation_bos_kept != pytest.approx(ce_all_zeroed, rel=1e-3)  # BOS kept: another pass
    ce_sae, ce_clean = perf.ce_loss_with_sae, perf.ce_loss_without_sae
    zeroed = perf.ce_loss_with_ablation  # == ce_all_zeroed above (CE_zero - CE_clean is small on a random model)
    assert recon.loss_recovered == pytest.approx((zeroed - ce_sae) / (zeroed - ce_clean), rel=1e-6)
    kept = recon.ce_loss_with_ablation_bos_kept
    assert recon.loss_recovered_bos_kept == pytest.approx((kept - ce_sae) / (kept - ce_clean), rel=1e-6)


@pytest.mark.parametrize("kind,sae_id", [("batch-abstopk", "batch-abstopk"), ("jumprelu", "batchtopk")])
def test_batch_selection_at_inference_keeps_k_per_token_on_average(setting, kind, sae_id):
    _, _, acts = setting
    sae = random_sae(kind, threshold=0.8)
    default = run_core(_ctx(setting), {sae_id: sae})[sae_id]
    batch = run_core(_ctx(setting, inference="batch"), {sae_id: sae})[sae_id]
    assert default.eval_result_unstructured["inference"]["rule"] == "threshold (checkpoint)"
    record = batch.eval_result_unstructured["inference"]
    assert record["option"] == "batch" and record["rule"] == "batch top-(k*B), k=4"
    # every held-out row is in one pool of B rows that keeps exactly 4 * B entries
    assert batch.eval_result_metrics.sparsity.l0 == pytest.approx(4.0)
    assert default.eval_result_metrics.sparsity.l0 != pytest.approx(4.0, abs=0.5)
    if kind == "batch-abstopk":  # signed: the selection ranks |u| and keeps negative values
        assert 0 < batch.eval_result_metrics.sparsity.frac_negative < 1
    else:
        assert batch.eval_result_metrics.sparsity.frac_negative == 0


def test_batch_inference_leaves_per_sample_saes_unchanged(setting):
    sae = random_sae("abstopk", d_sae=32)
    a = run_core(_ctx(setting), {"abstopk": sae})["abstopk"]
    b = run_core(_ctx(setting, inference="batch"), {"abstopk": sae})["abstopk"]
    assert b.eval_result_unstructured["inference"]["rule"] == "per-sample top-k, k=4"
    na, nb = a.eval_result_metrics.normalised_reconstruction, b.eval_result_metrics.normalised_reconstruction
    assert (na.nmse, na.loss_recovered) == pytest.approx((nb.nmse, nb.loss_recovered), rel=1e-6)


def test_inference_k_sweep_scores_one_trained_sae_at_each_k(setting):
    saes = {"topk": random_sae("topk", d_sae=32, k=4), "relu": random_sae("relu", d_sae=32)}
    out = run_core(_ctx(setting, inference_k=[2, 4, 16, 64]), saes)
    sweep = out["topk"].eval_result_unstructured["inference_k_sweep"]
    assert [p["inference_k"] for p in sweep] == [2, 4, 16]  # 64 > d_sae is skipped, with a note
    assert "outside 1..d_sae" in out["topk"].eval_result_unstructured["inference_k_sweep_note"]
    # per-sample top-k keeps k (sae_lens's TopK then drops the negative ones of a random SAE's top 16)
    assert [p["l0"] for p in sweep[:2]] == pytest.approx([2, 4]) and 4 < sweep[2]["l0"] <= 16
    trained = out["topk"].eval_result_metrics.normalised_reconstruction
    at_4 = sweep[1]
    assert (at_4["nmse"], at_4["loss_recovered"]) == pytest.approx((trained.nmse, trained.loss_recovered), rel=1e-6)
    assert sweep[0]["nmse"] != pytest.approx(sweep[2]["nmse"], rel=1e-3)
    assert saes["topk"].cfg.k == 4 and saes["topk"].activation_fn.k == 4  # the trained SAE itself is untouched
    assert out["relu"].eval_result_unstructured["inference_k_sweep"] == []
    assert "takes no k" in out["relu"].eval_result_unstructured["inference_k_sweep_note"]


def test_inference_options_parse_and_refuse_bad_values():
    assert parse_eval_options(["core.inference=batch", "core.inference_k=16,32"]) == {
        "core": {"inference": "batch", "inference_k": [16, 32]}
    }
    for bad in ("core.inference=topk", "core.inference_k=[0]"):
        with pytest.raises(UserError):
            parse_eval_options([bad])


def test_an_inference_k_copy_shares_the_weights():
    from abstopk_eval.evals.core.inference import InferencePlan, with_inference_k

    sae = random_sae("abstopk", d_sae=32, k=4)
    swept = with_inference_k(InferencePlan(sae, "per-sample top-k, k=4", 4), 8).sae
    assert swept.W_enc.data_ptr() == sae.W_enc.data_ptr() and swept.cfg.k == 8 and sae.cfg.k == 4
    x = torch.randn(5, D_MODEL)
    assert ((swept.encode(x) != 0).sum(-1) == 8).all() and ((sae.encode(x) != 0).sum(-1) == 4).all()
