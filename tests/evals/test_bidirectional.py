"""Bidirectional case study: a hand-built signed latent is found bidirectional, split atoms are found split."""

from __future__ import annotations

import re

import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from abstopk_eval.data.bipolar_pairs import AXES
from abstopk_eval.errors import UserError
from abstopk_eval.evals.bidirectional.eval_config import BidirectionalEvalConfig
from abstopk_eval.evals.bidirectional.main import run_bidirectional
from abstopk_eval.evals.context import EvalContext
from tests.helpers.context import make_eval_context
from tests.helpers.saes import negate_latent

D = 16
AXIS = AXES[3]  # temperature: hot/cold, warm/cool


class WordTokenizer:
    """One id per word or punctuation mark."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in re.findall(r"\w+|[^\w\s]", text)]


class StubAdapter:
    """activations = a fixed embedding per token: pole-A words at +axis, pole-B words at -axis, others ~0."""

    d_model = D
    device = torch.device("cpu")

    def __init__(self, direction: torch.Tensor) -> None:
        self.tokenizer = WordTokenizer()
        self.direction = direction

    def activations(self, ids: torch.Tensor, layer: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        table = 0.01 * torch.randn(1000, D, generator=g)
        for a, b in AXIS.words:
            if a in self.tokenizer.vocab:
                table[self.tokenizer.vocab[a]] = 2 * self.direction
            if b in self.tokenizer.vocab:
                table[self.tokenizer.vocab[b]] = -2 * self.direction
        return table[ids]


def _ctx(direction: torch.Tensor) -> EvalContext:
    return make_eval_context(StubAdapter(direction), layer=0, model_key="stub", model_name="stub", dataset="-")


def _sae(cls, cfg_cls, atoms: torch.Tensor):
    sae = cls(cfg_cls(d_in=D, d_sae=atoms.shape[0], k=2))
    with torch.no_grad():
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(atoms.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


CFG = BidirectionalEvalConfig(model_name="stub", axes=[AXIS.name])


def _atoms(direction: torch.Tensor, split: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    atoms = torch.nn.functional.normalize(torch.randn(8, D, generator=g), dim=-1) * 0.05
    atoms[0] = direction
    if split:
        atoms[1] = -direction
    return atoms


def test_one_signed_latent_is_bidirectional_and_split_atoms_are_split():
    direction = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(2)), dim=0)
    signed = _sae(AbsTopKSAE, AbsTopKSAEConfig, _atoms(direction, split=False))
    split = _sae(TopKSAE, TopKSAEConfig, _atoms(direction, split=True))
    out = run_bidirectional(_ctx(direction), {"abs": signed, "topk": split}, CFG)
    abs_axis, topk_axis = out["abs"].eval_result_details[0], out["topk"].eval_result_details[0]
    assert abs_axis.category == "bidirectional" and abs_axis.top_latent == 0 and abs_axis.n_pairs == 8
    assert abs_axis.top_mean_a > 0 > abs_axis.top_mean_b
    assert topk_axis.category == "split" and {topk_axis.top_latent, topk_axis.partner_latent} == {0, 1}
    assert (
        min(topk_axis.top_mean_a, topk_axis.top_mean_b) == 0 < max(topk_axis.top_mean_a, topk_axis.top_mean_b)
    )  # raw, >= 0
    assert out["abs"].eval_result_metrics.bidirectional.frac_axes_bidirectional == 1.0
    assert out["topk"].eval_result_metrics.bidirectional.frac_axes_split == 1.0


def test_scores_are_invariant_to_negating_a_signed_latent():
    direction = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(3)), dim=0)
    sae = _sae(AbsTopKSAE, AbsTopKSAEConfig, _atoms(direction, split=False))
    ref = run_bidirectional(_ctx(direction), {"a": sae}, CFG)["a"]
    flipped = run_bidirectional(_ctx(direction), {"a": negate_latent(sae, 0)}, CFG)["a"]
    assert flipped.eval_result_metrics == ref.eval_result_metrics
    assert flipped.eval_result_details == ref.eval_result_details


def test_unknown_axis_is_a_user_error():
    with pytest.raises(UserError, match="unknown bipolar axis"):
        run_bidirectional(_ctx(torch.ones(D)), {}, BidirectionalEvalConfig(axes=["north/south"]))
