"""`abstopk_eval.saes.formats`: external checkpoint layouts (sae_bench, dictionary_learning) read the way their
libraries compute, and ambiguous or mismatched checkpoints are refused."""

from __future__ import annotations

import json

import pytest
import torch

from abstopk_eval.errors import UserError
from abstopk_eval.saes.formats import detect_format, load_external
from tests.helpers.models import TINY
from tests.helpers.saes import random_raw_sae, save_raw_safetensors


def test_wrong_d_in_and_ambiguous_sae_bench_are_refused(tmp_path, tiny_registered):
    narrow = save_raw_safetensors(tmp_path / "narrow.safetensors", random_raw_sae(d_in=16), activation="abstopk", k="4")
    with pytest.raises(UserError, match="d_in=16 but tiny-test has d_model=32"):
        load_external(narrow, spec=TINY, layer=1)
    raw = random_raw_sae()
    torch.save(
        {
            "W_enc": raw.W_enc,
            "W_dec": raw.W_dec,
            "b_enc": raw.b_enc,
            "b_dec": raw.b_dec,
            "k": torch.tensor(4, dtype=torch.int),
        },
        tmp_path / "bare.pt",
    )
    with pytest.raises(UserError, match="pass --activation"):
        load_external(tmp_path / "bare.pt", spec=TINY, layer=1)
    ext = load_external(tmp_path / "bare.pt", spec=TINY, layer=1, activation="abstopk")
    assert ext.format == "sae_bench" and ext.signed and ext.sae.cfg.architecture() == "abstopk"
    with pytest.raises(UserError, match="contradicts"):
        load_external(tmp_path / "bare.pt", spec=TINY, layer=1, activation="abstopk", k=8)


def test_dictionary_learning_topk_and_jumprelu_layouts(tmp_path, tiny_registered):
    """Non-signed dictionary_learning classes: TopK (relu then top-k) and JumpReLU (no b_dec subtraction)."""
    raw = random_raw_sae(activation="topk")
    folder = tmp_path / "topk"
    folder.mkdir()
    torch.save(
        {
            "encoder.weight": raw.W_enc.T,
            "encoder.bias": raw.b_enc,
            "decoder.weight": raw.W_dec.T,
            "b_dec": raw.b_dec + 1.0,
            "k": torch.tensor(4, dtype=torch.int),
            "threshold": torch.tensor(-1.0),
        },
        folder / "ae.pt",
    )
    (folder / "config.json").write_text(
        json.dumps({"trainer": {"dict_class": "AutoEncoderTopK", "k": 4, "layer": 1, "lm_name": "local/tiny-llama"}})
    )
    assert detect_format(folder) == ("dictionary_learning", folder / "ae.pt")
    ext = load_external(folder, spec=TINY, layer=1)
    assert (ext.activation, ext.architecture, ext.k, ext.signed) == ("topk", "topk", 4, False)
    x = torch.randn(5, 32)
    u = torch.relu((x - (raw.b_dec + 1.0)) @ raw.W_enc + raw.b_enc)
    expected = torch.zeros_like(u).scatter(-1, u.topk(4, dim=-1).indices, u.topk(4, dim=-1).values)
    torch.testing.assert_close(ext.sae.encode(x), expected)

    jr = tmp_path / "jumprelu"
    jr.mkdir()
    threshold = torch.full((64,), 0.5)
    torch.save(
        {"W_enc": raw.W_enc, "b_enc": raw.b_enc, "W_dec": raw.W_dec, "b_dec": raw.b_dec + 1.0, "threshold": threshold},
        jr / "ae.pt",
    )
    (jr / "config.json").write_text(json.dumps({"trainer": {"dict_class": "JumpReluAutoEncoder", "layer": 1}}))
    ext = load_external(jr, spec=TINY, layer=1)
    pre = x @ raw.W_enc + raw.b_enc
    torch.testing.assert_close(ext.sae.encode(x), torch.relu(pre) * (pre > threshold))
    assert ext.sae.cfg.apply_b_dec_to_input is False

    (jr / "config.json").write_text(json.dumps({"trainer": {"dict_class": "GatedAutoEncoder", "layer": 1}}))
    with pytest.raises(UserError, match="GatedAutoEncoder"):
        load_external(jr, spec=TINY, layer=1)
