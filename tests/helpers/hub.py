"""An offline Hugging Face cache holding a tiny sae_lens release, registered in sae_lens's pretrained directory.

`offline_release` writes SAE folders into `<cache>/models--<owner>--<name>/snapshots/<commit>/` with
`refs/main` pointing at the commit (huggingface_hub's own cache layout), switches huggingface_hub to that cache
and offline, blocks sockets, and adds a `PretrainedSAELookup` for the release to the (cached) directory dict that
`SAE.from_pretrained` reads, so the real sae_lens and huggingface_hub loading code runs without a network.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import save_file

RELEASE = "tiny-test-release"
REPO_ID = "local/tiny-test-saes"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class OfflineRelease:
    release: str
    repo_id: str
    commit: str
    cache: Path
    snapshot: Path


def legacy_cfg(sae: SAE, *, model: str, hook_name: str, hook_layer: int) -> dict:
    """A pre-6.0 sae_lens cfg.json (as jbloom's gpt2-small-res-jb release has): flat fields, no metadata."""
    return {
        "architecture": "standard",
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": model,
        "hook_point": hook_name,
        "hook_point_layer": hook_layer,
        "hook_layer": hook_layer,
        "hook_point_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "context_size": 32,
        "sae_lens_version": "2.1.3",
    }


def write_legacy_folder(folder: Path, sae: SAE, cfg: Mapping) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(dict(cfg)))
    tensors = {
        name: sae.state_dict()[name].detach().clone().contiguous() for name in ("W_enc", "W_dec", "b_enc", "b_dec")
    }
    save_file(tensors, folder / "sae_weights.safetensors")


def offline_release(
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    folders: Mapping[str, SAE | tuple[SAE, Mapping]],
    *,
    model: str,
    release: str = RELEASE,
    repo_id: str = REPO_ID,
) -> OfflineRelease:
    """Write each `sae_id -> SAE` (saved with `save_model`) or `sae_id -> (SAE, legacy cfg dict)` into the cache
    under a folder named like the id, and register the release; everything is undone by `monkeypatch`."""
    import huggingface_hub.constants as hub_constants
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    saes_map = {}
    for sae_id, item in folders.items():
        folder_name = sae_id.replace("/", "__")
        if isinstance(item, tuple):
            write_legacy_folder(snapshot / folder_name, item[0], item[1])
        else:
            item.save_model(snapshot / folder_name)
        saes_map[sae_id] = folder_name
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # huggingface_hub read both at import
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    lookup = PretrainedSAELookup(
        release=release,
        repo_id=repo_id,
        model=model,
        conversion_func=None,
        saes_map=saes_map,
        expected_var_explained=dict.fromkeys(saes_map, 1.0),
        expected_l0=dict.fromkeys(saes_map, 0.0),
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )
    monkeypatch.setitem(get_pretrained_saes_directory(), release, lookup)
    return OfflineRelease(release, repo_id, COMMIT, cache, snapshot)


def scaled_decoder(sae: SAE, seed: int = 1) -> SAE:
    """`sae` with decoder rows of norms in [0.5, 2) (as released ReLU SAEs often have), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.mul_((0.5 + 1.5 * torch.rand(sae.cfg.d_sae, 1, generator=g)) / sae.W_dec.norm(dim=-1, keepdim=True))
    return sae
