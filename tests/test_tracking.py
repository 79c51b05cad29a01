"""`abstopk_eval.tracking`: with `--wandb`, each SAE trained by a run logs its training curve to wandb (a fake wandb
module stands in); without wandb installed, `--wandb` is a one-line error before any work."""

from __future__ import annotations

import json
import sys
import types

import pytest

from abstopk_eval import tracking
from abstopk_eval.errors import UserError


class FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_training_curve_is_logged_per_sae(tmp_path, fake_wandb):
    curve = [{"step": 10, "tokens": 100, "mse": 0.5, "fvu": 0.9, "l0": 4.0, "dead_frac": 0.0}]
    curve.append({"step": 20, "tokens": 200, "mse": 0.25, "fvu": 0.5, "l0": 4.0, "dead_frac": 0.1})
    path = tmp_path / "training.json"
    path.write_text(json.dumps({"curve": curve, "steps": 20, "train_seconds": 1.5}))
    missing = tmp_path / "absent.json"
    n = tracking.log_training_curves("proj", [("topk_s0", path, {"k": 4}), ("gone", missing, {})], group="m/layer_1")
    assert n == 1 and len(fake_wandb.runs) == 1
    run = fake_wandb.runs[0]
    assert run.kwargs == {
        "project": "proj",
        "name": "topk_s0",
        "group": "m/layer_1",
        "job_type": "train",
        "config": {"k": 4},
    }
    assert [step for step, _ in run.logged] == [10, 20]
    assert run.logged[1][1]["train/fvu"] == 0.5 and "train/step" not in run.logged[1][1]
    assert run.summary == {"steps": 20, "train_seconds": 1.5} and run.finished


def test_wandb_flag_without_wandb_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match="pip install wandb"):
        tracking.require_wandb("proj")
    tracking.require_wandb(None)  # off by default: nothing imported
