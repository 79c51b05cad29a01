"""The shared test helpers behave like the real things they stand in for (tests.helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers.context import make_eval_context, random_tokens
from tests.helpers.models import FAMILY_START, TINY_BUILDERS
from tests.helpers.saes import SAE_KINDS, negate_latent, random_sae
from tests.helpers.tokenizer import ALPHABET, SEQUENCE_STARTS, VOCAB, fold, tiny_tokenizer

MODEL_CLASSES = {
    "llama": "LlamaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "neox": "GPTNeoXForCausalLM",
}


@pytest.mark.parametrize("start", SEQUENCE_STARTS)
def test_each_kind_of_sequence_start_survives_save_and_autotokenizer(start, tmp_path):
    tok = tiny_tokenizer(start)
    assert len(tok) == VOCAB and tok.pad_token_id == 0
    body = tok("ab", add_special_tokens=False)["input_ids"]
    assert body == [3 + ALPHABET.index("a"), 3 + ALPHABET.index("b")]
    expected = {
        "bos": (1, 2, [1, *body]),  # Llama / Gemma: a distinct BOS, prepended
        "eos": (1, 1, body),  # GPT-2 / Pythia: <|endoftext|> is BOS and EOS, nothing prepended
        "none": (None, 2, body),  # Qwen: no BOS at all
    }[start]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for t in (tok, loaded):
        assert (t.bos_token_id, t.eos_token_id, t("ab")["input_ids"]) == expected
        assert t.decode(t("hi there")["input_ids"], skip_special_tokens=True) == "hi there"
    assert tiny_tokenizer(start, eos=False).eos_token_id is None


def test_tiny_tokenizer_roundtrip():
    tok = tiny_tokenizer(padding_side="left")
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[0, 0, 1, 4, 5], [1, 4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert tok.decode(tok.encode("hi there"), skip_special_tokens=True) == "hi there"


def test_characters_outside_the_alphabet_fold_onto_it():
    tok = tiny_tokenizer()
    assert tok.encode("\n{é", add_special_tokens=False) == tok.encode(
        fold("\n") + fold("{") + "?", add_special_tokens=False
    )
    assert fold("\n") == ALPHABET[ord("\n") % 61] and fold("a") == "a" and fold("é") == "?"


@pytest.mark.parametrize("family", sorted(TINY_BUILDERS))
def test_every_family_saves_as_a_folder_that_loads_back_the_same(family, tiny_model_dirs):
    model, tok = TINY_BUILDERS[family]()
    assert type(model).__name__ == MODEL_CLASSES[family] and not model.training
    assert model.config.num_hidden_layers == 3 and model.config.vocab_size == len(tok)
    assert tok.bos_token_id == tiny_tokenizer(FAMILY_START[family]).bos_token_id
    folder = tiny_model_dirs[family]
    loaded, loaded_tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    assert type(loaded) is type(model)
    ids = torch.tensor([loaded_tok("sparse autoencoders")["input_ids"]])
    assert ids[0].tolist() == tok("sparse autoencoders")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    again, _ = TINY_BUILDERS[family]()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))  # seeded


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_random_saes_are_seeded_and_only_signed_kinds_fire_negative(kind):
    sae = random_sae(kind)
    assert torch.equal(sae.W_enc, random_sae(kind).W_enc) and not torch.equal(sae.W_enc, random_sae(kind, seed=1).W_enc)
    z = sae.encode(torch.randn(256, sae.cfg.d_in, generator=torch.Generator().manual_seed(0)))
    assert (z != 0).any()
    assert bool((z < 0).any()) == (kind in ("abstopk", "batch-abstopk"))


@pytest.mark.parametrize("kind", ["abstopk", "batch-abstopk"])
def test_negating_a_signed_latent_keeps_the_map(kind):
    sae = random_sae(kind)
    x = torch.randn(64, sae.cfg.d_in, generator=torch.Generator().manual_seed(1))
    z = sae.encode(x)
    j = int((z != 0).sum(0).argmax())
    flipped = negate_latent(sae, j)
    z_f = flipped.encode(x)
    assert torch.equal(z_f[:, j], -z[:, j]) and (z[:, j] != 0).any()
    torch.testing.assert_close(flipped.decode(z_f), sae.decode(z))
    assert torch.equal(sae.W_dec[j], -flipped.W_dec[j])  # the original is untouched


def test_eval_context_defaults_and_overrides():
    acts = torch.ones(3, 5)
    ctx = make_eval_context(None, layer=2, heldout_activations=acts, model_key="m")
    assert (ctx.layer, ctx.model_key, ctx.provenance.model) == (2, "m", "m")
    assert ctx.heldout_activations() is acts
    tokens = random_tokens(2, 6, bos_token_id=1)
    assert tokens.shape == (2, 6) and (tokens[:, 0] == 1).all() and (tokens[:, 1:] >= 3).all()
    assert torch.equal(tokens, random_tokens(2, 6, bos_token_id=1))


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers (or a conftest); a test module importing another test module couples
    their fixtures and runs the other's module-level setup."""
    import ast

    root = Path(__file__).resolve().parent
    offenders = []
    for path in root.rglob("*.py"):
        if "helpers" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "tests" and len(parts) > 1 and parts[1] != "helpers" and parts[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(root)} imports {name}")
    assert not offenders, offenders
