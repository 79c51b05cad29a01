"""Resumable training checkpoints without pickle: a safetensors file of tensors plus a JSON file of the rest.

Layout in a run folder:

- ``checkpoint.<sha16>.safetensors``: every tensor (SAE weights, Adam moments, dead-latent counters), named by the
  first 16 hex digits of its own sha256; its safetensors metadata holds the sha256 of the JSON state below.
- ``checkpoint.json`` (the commit point): step, curve, optimiser param groups, scheduler state, what the checkpoint
  belongs to, the tensor file's name and sha256.

A save writes the tensor file (atomically, under a new name), then the JSON (atomically), then deletes older tensor
files: a process killed at any point leaves the previous checkpoint intact, or the new one complete. A load checks
both ways (the JSON names the tensor file and its digest, the tensor file names the JSON state's digest), so a
truncated, tampered or foreign checkpoint is refused with one line saying what to delete, never half-loaded and never
silently discarded. Only `safetensors` and `json` read these files: nothing on disk can run code.

The trainer draws no random numbers after building an SAE (the batch order is a function of seed and step), so no
RNG state needs saving for a resumed run to be bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from abstopk_eval import faults
from abstopk_eval.errors import UserError
from abstopk_eval.identity import canonical_json, identity_hash
from abstopk_eval.io import atomic_write_bytes, atomic_write_json, sha256_bytes

log = logging.getLogger("abstopk_eval.training")

CHECKPOINT_JSON = "checkpoint.json"
TENSORS_GLOB = "checkpoint.*.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"
"""The pickle checkpoint of older versions: never loaded."""
FORMAT = 1
_STATE_DIGEST = "state_sha256"
"""safetensors metadata key: sha256 of the canonical JSON state the tensors belong to."""


@dataclass(frozen=True)
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    """The JSON-serialisable rest (without the bookkeeping fields of this module)."""


def checkpoint_exists(folder: Path) -> bool:
    return (Path(folder) / CHECKPOINT_JSON).is_file()


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write a checkpoint of `tensors` and the JSON-serialisable `state` into `folder` (see the module docstring)."""
    folder = Path(folder)
    state = json.loads(canonical_json(state))  # what the JSON file will hold, so the digest matches on reading
    data = save_tensors(
        {name: t.detach().cpu().contiguous() for name, t in tensors.items()},
        metadata={_STATE_DIGEST: identity_hash(state)},
    )
    digest = sha256_bytes(data)
    name = f"checkpoint.{digest[:16]}.safetensors"
    atomic_write_bytes(folder / name, data)
    faults.point("checkpoint-write")  # tensors written, JSON not yet: the previous checkpoint must still load
    atomic_write_json(folder / CHECKPOINT_JSON, {"format": FORMAT, "tensors": name, "tensors_sha256": digest, **state})
    for old in folder.glob(TENSORS_GLOB):
        if old.name != name:
            old.unlink(missing_ok=True)


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint (JSON first: a crash half-way leaves only unreferenced tensor files, ignored)."""
    folder = Path(folder)
    (folder / CHECKPOINT_JSON).unlink(missing_ok=True)
    for path in folder.glob(TENSORS_GLOB):
        path.unlink(missing_ok=True)


def refused(folder: Path, reason: str) -> UserError:
    """The one-line error for a checkpoint that cannot be used: what is wrong and what to delete."""
    folder = Path(folder)
    return UserError(
        f"training checkpoint {folder / CHECKPOINT_JSON} {reason}; delete {folder / CHECKPOINT_JSON} and "
        f"{folder / TENSORS_GLOB} to restart this SAE's training from step 0"
    )


def load_checkpoint(folder: Path, *, belongs_to: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint in `folder`, or None when there is none; UserError when it is truncated, tampered with, or
    written for something else than `belongs_to` (compared with the state's "belongs_to")."""
    folder = Path(folder)
    legacy = folder / LEGACY_CHECKPOINT
    if legacy.is_file():
        raise UserError(
            f"{legacy} is a pickle checkpoint of an older version, which is not loaded (a pickle can run code); "
            f"delete {legacy} to restart this SAE's training from step 0"
        )
    json_path = folder / CHECKPOINT_JSON
    if not json_path.is_file():
        return None  # tensor files without a JSON are leftovers of a save killed before its commit
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise refused(folder, f"is unreadable ({type(err).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise refused(folder, f"is not a format-{FORMAT} checkpoint")
    name, digest = meta.pop("tensors", None), meta.pop("tensors_sha256", None)
    meta.pop("format")
    if not isinstance(name, str) or not isinstance(digest, str) or "/" in name or not name.startswith("checkpoint."):
        raise refused(folder, "does not name its tensor file")
    tensor_path = folder / name
    try:
        data = tensor_path.read_bytes()
    except OSError:
        raise refused(folder, f"names {name}, which is missing") from None
    if sha256_bytes(data) != digest:
        raise refused(folder, f"names {name}, which does not match its sha256 (truncated or altered)")
    try:
        tensors = load_tensors(data)
        header_size = int.from_bytes(data[:8], "little")  # safetensors: u64 header size, then the JSON header
        stored = (json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}).get(_STATE_DIGEST)
    except (SafetensorError, ValueError, AttributeError) as err:
        raise refused(folder, f"has an unreadable tensor file {name} ({type(err).__name__})") from None
    if stored != identity_hash(meta):
        raise refused(folder, "was altered (its state does not match the digest its tensor file records)")
    if meta.get("belongs_to") != json.loads(canonical_json(belongs_to)):
        raise refused(folder, f"belongs to another SAE or run ({meta.get('belongs_to')})")
    return Checkpoint(tensors, meta)


# ----------------------------------------------------------------------------- optimiser and scheduler state


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state_dict as (tensors named ``optimizer.<param>.<key>``, JSON-serialisable rest)."""
    tensors, plain = {}, {}
    for param, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{key}"] = value
            else:
                plain.setdefault(str(param), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `split_optimizer_state` (tuples, e.g. Adam's betas, come back as tuples)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            param, key = name.removeprefix("optimizer.").split(".", 1)
            state.setdefault(int(param), {})[key] = value
    for param, values in rest.get("plain_state", {}).items():
        state.setdefault(int(param), {}).update(values)
    groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}
