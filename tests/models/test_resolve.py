"""`--model` as a registry key, a hub id or a local folder: specs from configs, k = d_model/10, decoder blocks
found generically, hub errors told apart (gated, missing, unreachable), and a hub id loaded through the real hub
code from a local Hugging Face cache with HF_HUB_OFFLINE=1 (no downloads)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import pytest
import transformers
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from torch import nn

from abstopk_eval.errors import UserError
from abstopk_eval.models import loading
from abstopk_eval.models.adapter import ModelAdapter, find_decoder_layers
from abstopk_eval.models.loading import load_model, resolve_model
from abstopk_eval.models.registry import MODEL_REGISTRY, default_k
from tests.helpers.models import D_MODEL, N_LAYERS, TINY_BUILDERS

REPO_ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- registry


def test_paper_models_keep_their_layers_and_k_a_tenth_of_d_model():
    paper = {
        "gpt2": (76, (6, 8)),
        "pythia-70m": (51, (3, 4)),
        "gemma-2-2b": (230, (12, 16)),
        "qwen3-4b": (256, (18, 20)),
    }
    for key, (k, layers) in paper.items():  # Appendix B
        spec = MODEL_REGISTRY[key]
        assert (spec.paper_k, spec.paper_layers) == (k, layers)
        assert default_k(spec.d_model) == k


def test_a_registry_key_and_its_hub_id_give_the_entry():
    assert resolve_model("qwen3-4b") == (MODEL_REGISTRY["qwen3-4b"], None)
    spec, path = resolve_model("Qwen/Qwen3-4B", "/data/qwen")  # no hub access: the registry knows it
    assert spec is MODEL_REGISTRY["qwen3-4b"] and path == "/data/qwen"


# ----------------------------------------------------------------------------- local folders


@pytest.mark.parametrize("family", list(TINY_BUILDERS))
def test_a_local_folder_of_any_family_resolves_from_its_config(family, tiny_model_dirs):
    folder = tiny_model_dirs[family]
    spec, path = resolve_model(str(folder))
    key = f"local-{family}" if family in MODEL_REGISTRY else family  # the gpt2 folder is not the registry's gpt2
    assert (spec.key, spec.source, spec.hf_id, path) == (key, "local", str(folder), str(folder))
    assert (spec.n_layers, spec.d_model, spec.paper_k, spec.default_layer) == (N_LAYERS, D_MODEL, 3, 1)
    assert spec.context_size == 128  # the tiny models' max_position_embeddings, under the default 1024
    loaded = load_model(spec)
    adapter = ModelAdapter.from_loaded(loaded)
    assert adapter.layers() is find_decoder_layers(loaded.model) and adapter.n_layers == N_LAYERS
    assert "(--model)" in loaded.source_description


def test_a_hub_id_with_model_path_reads_the_folder(tiny_model_dirs):
    spec, path = resolve_model("some-org/tiny-qwen", tiny_model_dirs["qwen3"])
    assert (spec.key, spec.hf_id, spec.source) == ("some-org--tiny-qwen", "some-org/tiny-qwen", "hub")
    assert (spec.n_layers, spec.d_model) == (N_LAYERS, D_MODEL) and path == str(tiny_model_dirs["qwen3"])


@pytest.mark.parametrize(
    "name, model_path, message",
    [
        ("nope", None, "unknown model 'nope'"),
        ("./no/such/folder", None, "not an existing folder"),
        ("org/name/extra", None, "unknown model"),
    ],
)
def test_bad_model_names_are_one_line_errors(name, model_path, message):
    with pytest.raises(UserError, match=message) as err:
        resolve_model(name, model_path)
    assert "\n" not in str(err.value)


def test_a_folder_and_another_model_path_conflict(tiny_model_dirs):
    with pytest.raises(UserError, match="give one of them"):
        resolve_model(str(tiny_model_dirs["llama"]), tiny_model_dirs["gpt2"])


def test_decoder_blocks_are_found_in_an_unknown_layout():
    class Odd(nn.Module):
        def __init__(self, n_lists: int) -> None:
            super().__init__()
            self.config = SimpleNamespace(num_hidden_layers=2, hidden_size=4)
            self.trunk = nn.Module()
            self.trunk.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.heads = nn.ModuleList([nn.Linear(4, 4)] * (2 if n_lists > 1 else 3))

    odd = Odd(1)
    assert find_decoder_layers(odd) is odd.trunk.blocks
    with pytest.raises(UserError, match="2 candidate lists"):
        find_decoder_layers(Odd(2))


# ----------------------------------------------------------------------------- hub errors


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/org/model"))


@pytest.fixture
def online(monkeypatch):
    """The hub counts as reachable (no real network is touched: the hub calls are replaced in each test)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: True)


@pytest.mark.parametrize(
    "error, message",
    [
        (lambda: GatedRepoError("gated", response=_response(401)), "is gated"),
        (lambda: HfHubHTTPError("unauthorised", response=_response(401)), "is gated"),
        (lambda: RepositoryNotFoundError("missing", response=_response(404)), "is not on the Hugging Face hub"),
        (lambda: httpx2.ConnectError("connection refused"), "not reachable"),
    ],
)
def test_hub_config_errors_are_told_apart(online, monkeypatch, error, message):
    def download(repo_id, filename, *, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        raise error()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(UserError) as err:
        resolve_model("org/model")
    text = str(err.value)
    assert message in text and "\n" not in text
    if message == "is gated":
        assert "not reachable" not in text and "HF_TOKEN" in text


def test_a_gated_registry_model_without_token_is_not_reported_unreachable(online, monkeypatch):
    def from_pretrained(repo_id, *, local_files_only=False, **kwargs):
        if local_files_only:
            raise OSError("not in the local cache")
        try:
            raise GatedRepoError("401 gated", response=_response(401))
        except GatedRepoError as cause:  # as transformers wraps it
            raise OSError("You are trying to access a gated repo.") from cause

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(UserError, match="google/gemma-2-2b is gated") as err:
        load_model("gemma-2-2b")
    assert "not reachable" not in str(err.value)


def test_an_unreachable_hub_is_one_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda *a, **k: (_ for _ in ()).throw(LocalEntryNotFoundError("not in the cache")),
    )
    with pytest.raises(UserError, match="not reachable from here") as err:
        resolve_model("org/model")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- a local HF cache, offline

_LOAD_FROM_CACHE = """
import json, socket
def no_network(*a, **k):
    raise AssertionError("network access attempted")
socket.socket.connect = no_network
from abstopk_eval.models.loading import load_model, resolve_model, sequence_start_identity, weights_identity
from abstopk_eval.models.adapter import ModelAdapter
spec, path = resolve_model("tiny-org/tiny-qwen3")
loaded = load_model(spec)
adapter = ModelAdapter.from_loaded(loaded)
print(json.dumps({
    "key": spec.key, "source": spec.source, "dims": [spec.n_layers, spec.d_model, spec.paper_k], "path": path,
    "weights": weights_identity(spec), "start": sequence_start_identity(spec), "desc": loaded.source_description,
    "param_sum": float(sum(p.double().sum() for p in loaded.model.parameters())),
    "start_kind": adapter.sequence_start.kind,
}))
"""


def test_a_hub_id_loads_through_the_hub_code_from_a_local_cache_offline(tmp_path, tiny_model_dirs):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen3"
    shutil.copytree(tiny_model_dirs["qwen3"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_FROM_CACHE], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    model, _ = TINY_BUILDERS["qwen3"]()
    assert got["key"] == "tiny-org--tiny-qwen3" and got["source"] == "hub" and got["path"] is None
    assert got["dims"] == [N_LAYERS, D_MODEL, 3]
    assert got["weights"] == f"hf:tiny-org/tiny-qwen3@{revision}"
    assert got["start"] == "none" and got["start_kind"] == "none"
    assert got["desc"].startswith("Hugging Face hub tiny-org/tiny-qwen3")
    assert got["param_sum"] == pytest.approx(float(sum(p.double().sum() for p in model.parameters())), rel=1e-6)


def test_a_folder_named_like_a_registered_model_gets_its_own_key(tiny_model_dirs, tmp_path):
    folder = shutil.copytree(tiny_model_dirs["gpt2"], tmp_path / "gpt2")
    spec, path = resolve_model(str(folder))
    assert spec.key == "local-gpt2" and spec.source == "local" and path == str(folder.resolve())
    assert spec.d_model == D_MODEL  # from the folder's config, not the registry's gpt2 (768)


@pytest.mark.parametrize("flags", [["--model-path"], ["--model"]])
def test_model_path_alone_or_model_folder_plan_the_folders_model(flags, tiny_model_dirs, tmp_path):
    from abstopk_eval import run

    folder = tiny_model_dirs["qwen3"]
    dirs = [a for d in ("results", "runs", "reports") for a in (f"--{d}-dir", str(tmp_path / d))]
    plan = run.plan_from_args(run.build_parser().parse_args([*flags, str(folder), "--preset", "smoke", *dirs]))
    assert (plan.model.key, plan.model.source, plan.model_path) == ("qwen3", "local", str(folder))
    assert (plan.layer, plan.ks) == (1, [3])  # the middle layer, k = d_model // 10


def test_a_local_spec_is_identified_by_its_folders_files(tiny_model_dirs, tmp_path):
    spec, path = resolve_model(str(tiny_model_dirs["llama"]))
    pinned = loading.weights_identity(spec, cache_dir=tmp_path)
    assert pinned.startswith("local:") and pinned == loading.weights_identity(spec, model_path=path, cache_dir=tmp_path)
    other, _ = resolve_model(str(tiny_model_dirs["gemma2"]))
    assert loading.weights_identity(other, cache_dir=tmp_path) != pinned
