"""Resume checkpoints: safetensors + JSON, no pickle; truncated, altered or foreign ones refused with one line."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from abstopk_eval import faults
from abstopk_eval.errors import UserError
from abstopk_eval.training import checkpoint as ckpt_mod
from abstopk_eval.training.checkpoint import (
    CHECKPOINT_JSON,
    TENSORS_GLOB,
    join_optimizer_state,
    load_checkpoint,
    save_checkpoint,
    split_optimizer_state,
)
from abstopk_eval.training.trainer import TrainJob, train_jobs
from tests.helpers.training import D_IN, MEAN, PRESET, SCALE, Interrupted, stream_factory

OWNER = {"sae_id": "topk_k2_s0", "identity_hash": "abc", "d_in": 8, "d_sae": 64}


def _save(folder, step=3, value=1.0):
    tensors = {"sae.W": torch.full((4, 3), value), "count": torch.arange(5)}
    save_checkpoint(folder, tensors, {"belongs_to": OWNER, "step": step, "curve": [{"fvu": 0.5}]})
    return tensors


def _tensor_file(folder):
    (path,) = folder.glob(TENSORS_GLOB)
    return path


def test_round_trip_keeps_tensors_and_state(tmp_path):
    tensors = _save(tmp_path)
    loaded = load_checkpoint(tmp_path, belongs_to=OWNER)
    assert loaded is not None and loaded.state["step"] == 3 and loaded.state["curve"] == [{"fvu": 0.5}]
    assert all(torch.equal(loaded.tensors[k], v) for k, v in tensors.items())
    assert load_checkpoint(tmp_path / "none", belongs_to=OWNER) is None


def test_a_new_save_replaces_the_old_tensor_file(tmp_path):
    _save(tmp_path, step=3, value=1.0)
    _save(tmp_path, step=6, value=2.0)
    assert len(list(tmp_path.glob(TENSORS_GLOB))) == 1
    assert load_checkpoint(tmp_path, belongs_to=OWNER).state["step"] == 6


def _refused(tmp_path, match):
    with pytest.raises(UserError, match=match) as err:
        load_checkpoint(tmp_path, belongs_to=OWNER)
    message = str(err.value)
    assert "\n" not in message and f"delete {tmp_path / CHECKPOINT_JSON}" in message


def test_truncated_tensor_file_is_refused(tmp_path):
    _save(tmp_path)
    path = _tensor_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    _refused(tmp_path, "does not match its sha256")


def test_missing_tensor_file_is_refused(tmp_path):
    _save(tmp_path)
    _tensor_file(tmp_path).unlink()
    _refused(tmp_path, "which is missing")


def test_altered_json_state_is_refused(tmp_path):
    _save(tmp_path)
    meta = json.loads((tmp_path / CHECKPOINT_JSON).read_text())
    meta["step"] = 30
    (tmp_path / CHECKPOINT_JSON).write_text(json.dumps(meta))
    _refused(tmp_path, "was altered")


def test_truncated_json_is_refused(tmp_path):
    _save(tmp_path)
    text = (tmp_path / CHECKPOINT_JSON).read_text()
    (tmp_path / CHECKPOINT_JSON).write_text(text[: len(text) // 2])
    _refused(tmp_path, "is unreadable")


def test_altered_tensor_file_with_matching_digest_is_refused(tmp_path):
    """Someone replaced the tensors and updated the JSON's digest: the tensor file's own state digest differs."""
    _save(tmp_path)
    path = _tensor_file(tmp_path)
    from safetensors.torch import save

    data = save({"sae.W": torch.zeros(4, 3), "count": torch.arange(5)}, metadata={"state_sha256": "0" * 64})
    path.write_bytes(data)
    meta = json.loads((tmp_path / CHECKPOINT_JSON).read_text())
    meta["tensors_sha256"] = ckpt_mod.sha256_bytes(data)
    (tmp_path / CHECKPOINT_JSON).write_text(json.dumps(meta))
    _refused(tmp_path, "was altered")


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _save(tmp_path)
    with pytest.raises(UserError, match="belongs to another SAE or run"):
        load_checkpoint(tmp_path, belongs_to={**OWNER, "identity_hash": "other"})


def test_a_pickle_checkpoint_is_never_loaded(tmp_path, monkeypatch):
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x04not a real pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(UserError, match="pickle checkpoint.*delete"):
        load_checkpoint(tmp_path, belongs_to=OWNER)


def test_killed_between_tensors_and_json_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, step=3)

    def die(name, detail=None):
        if name == "checkpoint-write":
            raise Interrupted

    monkeypatch.setattr(faults, "point", die)
    with pytest.raises(Interrupted):
        _save(tmp_path, step=6, value=2.0)
    loaded = load_checkpoint(tmp_path, belongs_to=OWNER)
    assert loaded.state["step"] == 3 and torch.equal(loaded.tensors["sae.W"], torch.full((4, 3), 1.0))


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, step=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", full)
    with pytest.raises(OSError):
        _save(tmp_path, step=6, value=2.0)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_checkpoint(tmp_path, belongs_to=OWNER).state["step"] == 3


def test_optimizer_state_round_trips_exactly():
    p = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.99), fused=True)
    p.sum().backward()
    opt.step()
    tensors, rest = split_optimizer_state(opt.state_dict())
    rest = json.loads(json.dumps(rest))
    back = join_optimizer_state(tensors, rest)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    assert all(torch.equal(back["state"][0][k], v) for k, v in opt.state_dict()["state"][0].items())


def test_trainer_refuses_a_corrupt_checkpoint_instead_of_restarting(tmp_path):
    job = TrainJob("topk", 2, 0, PRESET.name, tmp_path / "topk")
    train = dict(d_in=D_IN, preset=PRESET, mean=MEAN, scale=SCALE, metadata={})
    with pytest.raises(Interrupted):
        train_jobs([job], stream_factory(stop_after=12), **train)
    path = _tensor_file(job.out_dir)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="does not match its sha256"):
        train_jobs([job], stream_factory(), **train)
