"""Optional Weights & Biases logging of training curves (`run --wandb PROJECT`; off by default).

When a run trains SAEs and `--wandb` names a project, each SAE trained by that run becomes one wandb run (name: the
SAE id, group: `<model>/layer_<L>`, config: its training identity) holding its training curve as recorded in
training.json (`train/mse`, `train/fvu`, `train/l0`, `train/dead_frac` and `train/tokens` at each logged step) and
the training time and throughput in its summary. The curve is logged when the SAE's training finishes, from the
file the trainer writes, so logging never touches training itself; SAEs already trained are not logged again.
wandb is imported only when asked for; it logs wherever wandb is configured (`wandb login`, or `WANDB_MODE=offline`
to keep runs on disk).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from abstopk_eval.errors import UserError

log = logging.getLogger("abstopk_eval.tracking")

SUMMARY_KEYS = ("steps", "tokens", "train_seconds", "tokens_per_second", "d_sae", "batch_size", "lr")
"""training.json fields that go into a wandb run's summary."""


def require_wandb(project: str | None) -> None:
    """UserError, before any work, when `--wandb` is given but wandb cannot be imported."""
    if project is None:
        return
    if not project.strip():
        raise UserError("--wandb needs a project name")
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb") from None


def log_training_curves(project: str, trained: Sequence[tuple[str, Path, dict[str, Any]]], *, group: str) -> int:
    """Log each (SAE id, training.json path, identity) as one wandb run of `project`; returns how many."""
    import wandb

    logged = 0
    for sae_id, training_json, identity in trained:
        try:
            info = json.loads(Path(training_json).read_text())
        except (OSError, ValueError):
            log.warning("no readable %s for %s; not logged to wandb", training_json, sae_id)
            continue
        run = wandb.init(project=project, name=sae_id, group=group, job_type="train", config=dict(identity))
        for point in info.get("curve") or []:
            values = {f"train/{key}": value for key, value in point.items() if key != "step"}
            run.log(values, step=int(point["step"]))
        run.summary.update({key: info[key] for key in SUMMARY_KEYS if key in info})
        run.finish()
        logged += 1
    log.info("logged %d training curve(s) to wandb project %s", logged, project)
    return logged
