"""The one sequence-start rule: its answer per tokenizer kind, and every consumer giving that same answer.

Consumers: packing (data.corpus), the activation cache, core's splice and zero-ablation, pooled evaluations,
absorption prompts, steering prompts and text batches, knowledge prompts (RAVEL, unlearning). Each test below
reads what a consumer actually prepended or excluded and compares it with `sequence_start_of(tokenizer)`; the
last test replaces the rule by an arbitrary one and checks every consumer follows it, so a consumer that decides
on its own (from the tokenizer's BOS, the model config, or `add_special_tokens`) fails.
"""

from __future__ import annotations

import sys

import pytest
import torch

from abstopk_eval.data.activation_cache import ActivationCache, CacheKey
from abstopk_eval.data.corpus import CorpusInfo, PackedTokens, pack_documents
from abstopk_eval.evals import pooled
from abstopk_eval.evals.absorption.eval_config import AbsorptionEvalConfig
from abstopk_eval.evals.absorption.main import _prompt_pieces
from abstopk_eval.evals.core import main as core
from abstopk_eval.evals.knowledge import encode
from abstopk_eval.evals.steering import steer
from abstopk_eval.models import sequence_start as rule
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.sequence_start import SequenceStart, sequence_start_of
from tests.helpers.context import make_eval_context
from tests.helpers.models import FAMILY_START, TINY_BUILDERS
from tests.helpers.saes import random_sae
from tests.helpers.tokenizer import SEQUENCE_STARTS, tiny_tokenizer

DOCS = ["the first document.", "a second one, a bit longer than the first.", "third!", "and a fourth document here"]
KIND_OF = {"bos": "bos", "eos": "bos_eq_eos", "none": "none"}
"""tests.helpers.tokenizer kind -> the rule's kind."""


def _family(start: str) -> str:
    return next(f for f, s in FAMILY_START.items() if s == start)


def _adapter(start: str, **config) -> ModelAdapter:
    model, tok = TINY_BUILDERS[_family(start)](**config)
    return ModelAdapter(model, tok)


def _expected_special(policy: SequenceStart, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The special positions, written out independently of `special_mask`: first real position + start ids."""
    special = torch.zeros_like(tokens, dtype=torch.bool)
    for r in range(tokens.shape[0]):
        real = range(tokens.shape[1]) if mask is None else [c for c in range(tokens.shape[1]) if mask[r, c]]
        special[r, next(iter(real))] = True
        for c in real:
            if int(tokens[r, c]) in policy.special_ids:
                special[r, c] = True
    return special


# ----------------------------------------------------------------------------- the rule itself


@pytest.mark.parametrize("start", SEQUENCE_STARTS)
def test_rule_per_tokenizer_kind(start):
    tok = tiny_tokenizer(start)
    policy = sequence_start_of(tok)
    assert policy.kind == KIND_OF[start]
    if start == "none":  # Qwen: nothing prepended (TransformerLens' default_prepend_bos=False for Qwen)
        assert policy.start_token_id is None and policy.special_ids == frozenset()
        assert policy.prepend([5, 6]) == [5, 6]
    else:  # Llama/Gemma BOS; GPT-2/Pythia <|endoftext|> (BOS = EOS), prepended although the tokenizer adds nothing
        assert policy.start_token_id == tok.bos_token_id == 1
        # <|endoftext|> also separates packed documents: special wherever it is; a distinct BOS only comes first
        assert policy.special_ids == ({1} if start == "eos" else set())
        assert policy.prepend([5, 6]) == [1, 5, 6] and policy.prepend([1, 5]) == [1, 5]
    assert policy.eos_token_id == tok.eos_token_id and policy.pad_token_id == tok.pad_token_id
    present = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}
    assert policy.pooling_excluded_ids == present


def test_special_mask_marks_first_real_position_and_start_tokens():
    policy = sequence_start_of(tiny_tokenizer("eos"))
    tokens = torch.tensor([[1, 5, 1, 6], [0, 0, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert policy.special_mask(tokens, mask).tolist() == [[True, False, True, False], [False, False, True, False]]
    assert policy.special_mask(tokens).tolist() == [[True, False, True, False], [True, False, False, False]]
    for start in ("none", "bos"):  # only the first position (a later BOS is an ordinary token, e.g. a chat turn)
        other = sequence_start_of(tiny_tokenizer(start))
        assert other.special_mask(tokens).tolist() == [[True, False, False, False], [True, False, False, False]]


# ----------------------------------------------------------------------------- every consumer, every kind


def _consumer_answers(adapter: ModelAdapter, tmp_path, monkeypatch) -> dict[str, object]:
    """What each consumer prepends / excludes for this adapter's tokenizer, as observed."""
    tok = adapter.tokenizer
    policy = adapter.sequence_start
    out: dict[str, object] = {}
    body = [int(i) for i in tok(DOCS[0], add_special_tokens=False)["input_ids"]]

    # packing: the first row starts with the start token, then the first document's own tokens
    packed = pack_documents(DOCS, tok, seq_len=12)
    out["packing"] = packed[0].tolist()[: len(policy.prepend(body[:4]))] == policy.prepend(body[:4])

    # activation cache: the rows kept are exactly the non-special positions
    info = CorpusInfo("tiny", "test", "none", "tiny", len(DOCS))
    cache = ActivationCache.build_or_load(
        tmp_path / "cache",
        CacheKey(model="tiny", layer=1, corpus="tiny", n_tokens=int(packed.numel()), seq_len=12),
        adapter,
        PackedTokens(packed, info, "train", len(DOCS)),
        batch_size=4,
    )
    expected = adapter.activations(packed, 1)[~_expected_special(policy, packed)]
    out["cache"] = cache.n_rows == expected.shape[0] and torch.allclose(
        torch.from_numpy(cache.activations[:]), expected, atol=1e-5
    )
    out["cache_meta"] = cache.meta["sequence_start"] == policy.record()

    # core: the positions kept at their original activation in the splice and the zero-ablation
    seen: list[torch.Tensor] = []
    real_splice = core._splice_fn

    def spy(sae, keep):
        seen.append(keep.clone())
        return real_splice(sae, keep)

    with monkeypatch.context() as patch:
        patch.setattr(core, "_splice_fn", spy)
        core.loss_stats(make_eval_context(adapter, layer=1, eval_tokens=packed[:3]), {"s": random_sae("topk")})
    # sae_bench's zero-ablation zeroes every position; the BOS-kept ablation and the SAE splice keep the specials
    special = _expected_special(policy, packed[:3])
    out["core"] = (
        len(seen) == 3 and not seen[0].any() and all(torch.equal(k, special) for k in seen[1:]) and special.any()
    )

    # pooled evaluations: what each text starts with, and the positions pooled
    ids, _ = pooled.tokenize_texts(tok, DOCS[:2], context_length=64)
    out["pooled_start"] = ids[0] == policy.prepend(body)
    input_ids = torch.tensor([ids[0][:6], ids[1][:6]])
    mask = torch.ones_like(input_ids)
    pooled_mask = pooled.pooled_positions(tok, input_ids, mask)
    excluded = _expected_special(policy, input_ids, mask) | torch.isin(
        input_ids, torch.tensor(sorted(policy.pooling_excluded_ids))
    )
    out["pooled_positions"] = torch.equal(pooled_mask, ~excluded)

    # absorption: the packed prompt's start
    sep = [int(i) for i in tok.encode("\n", add_special_tokens=False)]
    out["absorption"] = _prompt_pieces(tok, AbsorptionEvalConfig()).start == policy.prepend(sep)

    # steering: chat prompts (no chat template here) and packed text batches
    chat = [int(i) for i in tok.encode(steer.chat_text(tok, "hi"), add_special_tokens=False)]
    out["steering_prompts"] = steer.encode_chat(tok, ["hi"])[0] == policy.prepend(chat)
    fixed = steer.ce_batches(adapter, packed[:2], 1, batch_size=2)
    out["steering_text_skip"] = torch.equal(fixed.batches[0][2], _expected_special(policy, packed[:2]))
    seqs = [policy.prepend(body[:3]), policy.prepend(body[:5])]
    ids_lp, mask_lp, skip = steer.left_pad(seqs, adapter.pad_token_id, adapter.sequence_start)
    out["steering_prompt_skip"] = torch.equal(skip, ~mask_lp.bool() | _expected_special(policy, ids_lp, mask_lp))

    # knowledge prompts (RAVEL, unlearning) take the adapter's start token
    out["knowledge"] = encode(tok, DOCS[0], adapter.bos_token_id) == policy.prepend(body)
    return out


@pytest.mark.parametrize("start", SEQUENCE_STARTS)
def test_every_consumer_follows_the_rule(start, tmp_path, monkeypatch):
    # a Qwen3-like config: the model config names a BOS although the tokenizer has none (Qwen3's config says
    # bos_token_id 151643); nothing may read it
    adapter = _adapter(start, bos_token_id=0) if start == "none" else _adapter(start)
    assert adapter.sequence_start == sequence_start_of(adapter.tokenizer)
    answers = _consumer_answers(adapter, tmp_path, monkeypatch)
    assert all(answers.values()), {k: v for k, v in answers.items() if not v}


def test_consumers_do_not_decide_on_their_own(monkeypatch, tmp_path):
    """Swap the rule for an arbitrary one (start token 7 for a tokenizer without BOS): every consumer follows."""
    tok = tiny_tokenizer("none")
    fake = SequenceStart("bos_eq_eos", 7, frozenset({7}), 7, tok.eos_token_id, tok.pad_token_id)
    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("abstopk_eval") and getattr(module, "sequence_start_of", None) is sequence_start_of:
            monkeypatch.setattr(module, "sequence_start_of", lambda _tok: fake)
            patched += 1
    assert patched >= 5  # the rule module itself, the adapter, packing, pooled, absorption, steering
    assert rule.sequence_start_of(tok) is fake
    model, _ = TINY_BUILDERS["qwen3"](tokenizer=tok)
    adapter = ModelAdapter(model, tok)
    assert adapter.sequence_start is fake
    answers = _consumer_answers(adapter, tmp_path, monkeypatch)
    assert all(answers.values()), {k: v for k, v in answers.items() if not v}
