"""Shared fixtures: a tiny random Llama saved like a local model copy, registered as model `tiny-test`."""

from __future__ import annotations

import pytest
import torch

from abstopk_eval.models.registry import MODEL_REGISTRY, ModelSpec
from tests.helpers.tokenizer import tiny_tokenizer

TINY = ModelSpec(
    key="tiny-test", source="hub", hf_id="local/tiny-llama", n_layers=3, d_model=32, context_size=32, paper_k=4
)
"""Runs use it with `--model tiny-test --model-path <tiny_model_dir>`."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_model")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, TINY.key, TINY)
