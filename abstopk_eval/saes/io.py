"""Save trained SAEs in sae_lens's on-disk format (acting on raw activations) and load them back safely."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE

from abstopk_eval.errors import UserError
from abstopk_eval.io import atomic_directory
from abstopk_eval.saes import batch_abstopk as _registers  # noqa: F401


@torch.no_grad()
def fold_input_normalisation(sae: SAE, mean: torch.Tensor, scale: float) -> None:
    """Make an SAE trained on (x - mean)/scale act on raw x, with unit-norm decoder rows.

    Requires unit-norm decoder rows and apply_b_dec_to_input. Every latent becomes `scale` times its
    trained value (all our activation functions are positively homogeneous, thresholds scale too):
    W_enc, W_dec unchanged; b_enc *= scale; b_dec = scale * b_dec + mean; threshold *= scale.
    """
    if not sae.cfg.apply_b_dec_to_input:
        raise ValueError("folding the input normalisation needs apply_b_dec_to_input=True")
    sae.b_enc.mul_(scale)
    sae.b_dec.mul_(scale).add_(mean.to(sae.b_dec.dtype))
    if hasattr(sae, "threshold"):
        sae.threshold.mul_(scale)


def _unit_norm_decoder(sae: SAE) -> None:
    norms = sae.W_dec.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
        sae.fold_W_dec_norm()


def export_inference_sae(
    training_sae: TrainingSAE,
    out_dir: Path,
    *,
    mean: torch.Tensor,
    scale: float,
    metadata: dict[str, Any],
    finalize: Callable[[SAE], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write `training_sae` as an sae_lens inference checkpoint (cfg.json + sae_weights.safetensors).

    The checkpoint acts on raw (un-normalised) activations and reloads with `SAE.load_from_disk`. `finalize`, if
    given, may change the inference SAE before it is saved (e.g. calibrate its threshold); what it returns is
    recorded in the checkpoint's metadata and returned. Written to a temporary folder and renamed into place, so a
    crash never leaves half a checkpoint.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch, atomic_directory(out_dir) as staged:
        raw = Path(scratch) / "raw"
        training_sae.save_inference_model(raw)
        sae = SAE.load_from_disk(raw, device="cpu")
        _unit_norm_decoder(sae)
        fold_input_normalisation(sae, mean.float().cpu(), float(scale))
        recorded = finalize(sae) if finalize is not None else {}
        for key, value in {**metadata, **recorded}.items():
            sae.cfg.metadata[key] = value
        sae.save_model(staged)
    return recorded


def load_sae(path: str | Path, *, device: str = "cpu", expected_d_in: int | None = None) -> SAE:
    """Load an sae_lens-format SAE with one-line errors for missing, corrupt or mismatched checkpoints."""
    path = Path(path)
    cfg_file, weights = path / "cfg.json", path / "sae_weights.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise UserError(f"no SAE checkpoint at {path} (expected cfg.json and sae_weights.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"SAE checkpoint {path} has an unreadable cfg.json ({err.__class__.__name__})") from None
    if expected_d_in is not None and cfg.get("d_in") != expected_d_in:
        raise UserError(
            f"SAE checkpoint {path} has d_in={cfg.get('d_in')} but the model layer has d_model={expected_d_in}"
        )
    try:
        return SAE.load_from_disk(path, device=device)
    except KeyError as err:
        raise UserError(f"SAE checkpoint {path} has unknown architecture {err}") from None
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise UserError(
            f"SAE checkpoint {path} is corrupt or truncated ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0][:120]})"
        ) from None
