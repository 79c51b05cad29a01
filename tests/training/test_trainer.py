"""Trainer: one shared pass, checkpoint round trip through sae_lens, resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE

from abstopk_eval.saes.variants import ALL_VARIANTS
from abstopk_eval.training.checkpoint import CHECKPOINT_JSON, checkpoint_exists
from abstopk_eval.training.trainer import TrainJob, train_jobs
from tests.helpers.training import D_IN, DATA, MEAN, PRESET, SCALE, Interrupted, stream_factory


def _jobs(root, variants=ALL_VARIANTS):
    return [TrainJob(v, 2, 0, PRESET.name, root / v) for v in variants]


def _train(jobs, **kw):
    train_jobs(
        jobs,
        kw.pop("factory", stream_factory()),
        d_in=D_IN,
        preset=PRESET,
        mean=MEAN,
        scale=SCALE,
        metadata={"model": "synthetic"},
        **kw,
    )


def test_all_variants_train_from_one_pass_and_reload_with_sae_lens(tmp_path):
    calls: list[int] = []
    jobs = _jobs(tmp_path)
    _train(jobs, factory=stream_factory(calls=calls))
    assert calls == [0]  # one shared pass for the six variants
    for job in jobs:
        sae = SAE.load_from_disk(job.sae_dir)
        info = json.loads((job.out_dir / "training.json").read_text())
        assert info["steps"] == PRESET.total_steps and info["curve"]
        assert not checkpoint_exists(job.out_dir) and not list(job.out_dir.glob("checkpoint.*"))
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-5)
        z = sae.encode(DATA[:256])
        fvu = (sae.decode(z) - DATA[:256]).pow(2).sum() / (DATA[:256] - MEAN).pow(2).sum()
        assert fvu < 1.0, (job.variant, float(fvu))  # learned something, on raw (un-normalised) inputs
        if job.variant in ("abstopk", "batch-abstopk"):
            assert (z < 0).any()
        else:
            assert (z >= 0).all()


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    variants = ("topk", "abstopk", "jumprelu")
    _train(_jobs(tmp_path / "straight", variants))
    jobs = _jobs(tmp_path / "resumed", variants)
    with pytest.raises(Interrupted):
        _train(jobs, factory=stream_factory(stop_after=20))
    assert json.loads((jobs[0].out_dir / CHECKPOINT_JSON).read_text())["step"] == 16  # last one before the stop
    calls: list[int] = []
    _train(jobs, factory=stream_factory(calls=calls))
    assert calls == [16]
    for v in variants:
        a = SAE.load_from_disk(tmp_path / "straight" / v / "sae")
        b = SAE.load_from_disk(tmp_path / "resumed" / v / "sae")
        for name, p in a.state_dict().items():
            assert torch.equal(p, b.state_dict()[name]), (v, name)  # bit-identical


def test_finished_jobs_are_skipped(tmp_path):
    jobs = _jobs(tmp_path, ("topk",))
    _train(jobs)
    calls: list[int] = []
    _train(jobs, factory=stream_factory(calls=calls))
    assert calls == []


@pytest.mark.parametrize("sparse", [True, False])
def test_bf16_training_runs_and_records_its_dtype(tmp_path, sparse):
    jobs = _jobs(tmp_path, ["relu", "abstopk"])
    _train(jobs, sparse=sparse, bf16=True)
    for job in jobs:
        info = json.loads((job.out_dir / "training.json").read_text())
        assert info["encoder_dtype"] == "bfloat16"
        assert info["curve"][-1]["fvu"] < 1.0
        assert SAE.load_from_disk(str(job.sae_dir)).W_enc.dtype == torch.float32
