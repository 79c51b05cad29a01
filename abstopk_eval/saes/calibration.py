"""Calibrate a batch-level SAE's inference threshold so its mean L0 on training activations equals k.

Batch-level variants (BatchTopK, batch-level AbsTopK) select the B*k largest (|)pre-activations(|) of a whole batch
while training; at inference a threshold replaces that selection. sae_lens tracks it as a running mean (weight
0.01, starting at 0) of the smallest selected value, which after a short run is still well below its limit: the
quick preset's batch-level SAEs ran at inference L0 77-82 for k = 64, so comparing them with per-sample SAEs at
k = 64 compared different sparsities. After training, the threshold is therefore set to the value that makes the
exported SAE keep exactly N*k entries over N training activations: the (N*k)-th largest score, where the score
is the pre-activation for unsigned (JumpReLU-style: z = relu(u) * [u > t]) and |u| for signed checkpoints
(z = u * [|u| > t]). The running threshold, the calibrated one and the L0 of both on the calibration rows are
recorded. (The paper's own code keeps batch selection at inference instead; that is an evaluation option.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from sae_lens import SAE

from abstopk_eval.saes.signs import has_signed_latents


@dataclass(frozen=True)
class ThresholdCalibration:
    k: float
    n_rows: int
    running_threshold: float
    calibrated_threshold: float
    l0_running: float
    """Mean L0 on the calibration rows with the running threshold (what the checkpoint had)."""
    l0_calibrated: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def _scores(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    pre = sae.process_sae_in(x.to(sae.W_enc.device, sae.W_enc.dtype)) @ sae.W_enc + sae.b_enc
    return pre.abs() if has_signed_latents(sae) else pre


@torch.no_grad()
def _l0(sae: SAE, rows: torch.Tensor, threshold: float, chunk: int) -> float:
    active = sum(int((_scores(sae, rows[i : i + chunk]) > threshold).sum()) for i in range(0, len(rows), chunk))
    return active / len(rows)


@torch.no_grad()
def calibrate_threshold(sae: SAE, rows: torch.Tensor, k: float, chunk: int = 4096) -> ThresholdCalibration:
    """Set `sae.threshold` (every latent) to the (N*k)-th largest score over `rows` [N, d_in]; returns the record.

    Exact without holding [N, d_sae] scores: each chunk keeps its `margin * chunk * k` largest scores as candidates,
    and the threshold taken among the candidates is exact when no chunk had more entries above it than it kept
    (checked; otherwise the margin doubles and the pass repeats).
    """
    if not hasattr(sae, "threshold"):
        raise ValueError("only threshold checkpoints (batch-level variants) are calibrated")
    n = int(rows.shape[0])
    n_keep = int(round(n * k))
    if not 0 < n_keep < n * sae.cfg.d_sae:
        raise ValueError(f"cannot keep {n_keep} of {n} x {sae.cfg.d_sae} entries")
    running = float(sae.threshold.detach().max())
    margin = 2
    while True:
        candidates, floors = [], []
        for start in range(0, n, chunk):
            scores = _scores(sae, rows[start : start + chunk]).flatten()
            keep = min(scores.numel(), int(margin * k * min(chunk, n - start)) + 1)
            top = torch.topk(scores, keep, sorted=False).values
            candidates.append(top)
            floors.append(float(top.min()) if keep < scores.numel() else float("-inf"))
        pool = torch.cat(candidates)
        threshold = float(torch.topk(pool, n_keep, sorted=False).values.min())
        if all(floor < threshold for floor in floors):
            break
        margin *= 2  # some chunk may hold more winners than it kept
    # keep exactly the entries strictly above the threshold: move it just below the (N*k)-th largest score
    threshold = float(torch.nextafter(torch.tensor(threshold), torch.tensor(float("-inf"))))
    sae.threshold.data.fill_(threshold)
    return ThresholdCalibration(
        k=float(k),
        n_rows=n,
        running_threshold=running,
        calibrated_threshold=threshold,
        l0_running=_l0(sae, rows, running, chunk),
        l0_calibrated=_l0(sae, rows, threshold, chunk),
    )
