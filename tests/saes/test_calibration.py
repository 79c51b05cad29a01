"""Batch-level SAEs' inference thresholds calibrated to mean L0 = k on training activations."""

from __future__ import annotations

import json

import pytest
import torch

from abstopk_eval.saes.calibration import calibrate_threshold
from abstopk_eval.saes.io import load_sae
from abstopk_eval.training.trainer import TRAINING_JSON, TrainJob, train_jobs
from tests.helpers.saes import negate_latent, random_sae
from tests.helpers.training import D_IN, DATA, MEAN, PRESET, SCALE, stream_factory


def _l0(sae, x) -> float:
    with torch.no_grad():
        return float((sae.encode(x) != 0).sum(-1).float().mean())


@pytest.mark.parametrize("kind", ["batch-abstopk", "jumprelu"])
def test_calibrated_l0_is_k_on_the_rows_and_close_on_fresh_ones(kind):
    sae = random_sae(kind, d_in=16, d_sae=96, threshold=0.05)
    rows, fresh = torch.randn(3000, 16), torch.randn(3000, 16)
    before = _l0(sae, rows)
    record = calibrate_threshold(sae, rows, k=5, chunk=512)  # several chunks
    assert abs(before - 5) > 1  # the initial threshold was far off
    assert record.l0_running == pytest.approx(before) and record.l0_calibrated == pytest.approx(5.0, abs=1e-3)
    assert _l0(sae, rows) == pytest.approx(5.0, abs=1e-3)
    assert _l0(sae, fresh) == pytest.approx(5.0, rel=0.05)
    assert float(sae.threshold.min()) == float(sae.threshold.max()) == record.calibrated_threshold


def test_calibration_is_unchanged_by_negating_a_signed_latent():
    sae = random_sae("batch-abstopk", d_in=16, d_sae=96)
    rows = torch.randn(2000, 16)
    flipped = negate_latent(sae, 7)
    assert (
        calibrate_threshold(sae, rows, k=4).calibrated_threshold
        == calibrate_threshold(flipped, rows, k=4).calibrated_threshold
    )


def test_trained_batch_variants_export_a_calibrated_threshold(tmp_path):
    jobs = [TrainJob(v, 3, 0, PRESET.name, tmp_path / v) for v in ("batch-abstopk", "batchtopk", "topk")]
    rows = DATA[:2048]
    train_jobs(
        jobs, stream_factory(), d_in=D_IN, preset=PRESET, mean=MEAN, scale=SCALE, metadata={}, calibration_rows=rows
    )
    for job in jobs[:2]:
        info = json.loads((job.out_dir / TRAINING_JSON).read_text())["inference_threshold"]
        assert info["l0_calibrated"] == pytest.approx(3.0, rel=0.01) and info["n_rows"] == 2048
        sae = load_sae(job.sae_dir)
        assert sae.cfg.metadata["inference_threshold"] == info
        assert _l0(sae, rows) == pytest.approx(3.0, rel=0.01)
    assert "inference_threshold" not in json.loads((jobs[2].out_dir / TRAINING_JSON).read_text())
