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


def _save_sparsify(folder, raw, **cfg):
    """A folder as sparsify's `SparseCoder.save_to_disk` writes it (cfg.json + sae.safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    d_in, d_sae = raw.W_enc.shape
    save_file(
        {
            "encoder.weight": raw.W_enc.T.contiguous(),
            "encoder.bias": raw.b_enc,
            "W_dec": raw.W_dec.contiguous(),
            "b_dec": raw.b_dec,
        },
        folder / "sae.safetensors",
    )
    base = {"activation": "topk", "expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": 0}
    (folder / "cfg.json").write_text(json.dumps({**base, "k": 4, "d_in": d_in, "transcode": False, **cfg}))
    return folder


def test_sparsify_folder_computes_sparsify_topk(tmp_path, tiny_registered):
    """sparsify's encoder: top-k of ReLU(W (x - b_dec) + b); decoder: W_dec rows + b_dec."""
    raw = random_raw_sae(activation="topk")
    raw.b_enc, raw.b_dec = torch.randn(64) * 0.1, torch.randn(32) * 0.1
    run = tmp_path / "sparsify-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": TINY.hf_id, "sae": {"k": 4}}))
    folder = _save_sparsify(run / "layers.1", raw)
    assert detect_format(folder) == ("sparsify", folder / "sae.safetensors")
    ext = load_external(folder, spec=TINY, layer=1)
    assert (ext.format, ext.activation, ext.k, ext.signed) == ("sparsify", "topk", 4, False)
    assert ext.declared == {"model": TINY.hf_id, "hook_name": "layers.1"}
    x = torch.randn(6, 32)
    pre = torch.relu((x - raw.b_dec) @ raw.W_enc + raw.b_enc)
    values, indices = pre.topk(4, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values)
    torch.testing.assert_close(ext.sae.encode(x), z)
    torch.testing.assert_close(ext.sae.decode(z), z @ raw.W_dec + raw.b_dec)
    with pytest.raises(UserError, match="not --layer 2"):  # the hookpoint folder names the layer
        load_external(folder, spec=TINY, layer=2)
    for name, cfg, message in (
        ("transcoder", {"transcode": True}, "transcoder"),
        ("groupmax", {"activation": "groupmax"}, "groupmax"),
    ):
        bad = _save_sparsify(run / name, raw, **cfg)
        with pytest.raises(UserError, match=message):
            load_external(bad, spec=TINY, layer=1)
    mlp = _save_sparsify(run / "layers.1.mlp", raw)
    with pytest.raises(UserError, match="not the residual stream"):
        load_external(mlp, spec=TINY, layer=1)


def test_resid_pre_of_the_next_block_is_accepted_as_this_layer(tmp_path, tiny_registered):
    raw = random_raw_sae()
    pre = save_raw_safetensors(
        tmp_path / "pre.safetensors", raw, activation="abstopk", k="4", hook_name="blocks.2.hook_resid_pre"
    )
    ext = load_external(pre, spec=TINY, layer=1)
    assert "blocks.2.hook_resid_pre" in ext.hook_note and "blocks.1.hook_resid_post" in ext.hook_note
    assert ext.provenance["hook_note"] == ext.hook_note
    with pytest.raises(UserError, match="is for layer 1"):
        load_external(pre, spec=TINY, layer=2)
    # sae_bench states the hook's own block as hook_layer; another layer contradicts the hook
    stated = save_raw_safetensors(
        tmp_path / "stated.safetensors",
        raw,
        activation="abstopk",
        k="4",
        hook_name="blocks.2.hook_resid_pre",
        layer="2",
    )
    assert load_external(stated, spec=TINY, layer=1).hook_note
    wrong = save_raw_safetensors(
        tmp_path / "wrong.safetensors", raw, activation="abstopk", k="4", hook_name="blocks.2.hook_resid_pre", layer="0"
    )
    with pytest.raises(UserError, match="declares layer 0"):
        load_external(wrong, spec=TINY, layer=1)
    embed = save_raw_safetensors(
        tmp_path / "embed.safetensors", raw, activation="abstopk", k="4", hook_name="blocks.0.hook_resid_pre"
    )
    with pytest.raises(UserError, match="not the residual stream"):
        load_external(embed, spec=TINY, layer=1)
    post = save_raw_safetensors(
        tmp_path / "post.safetensors", raw, activation="abstopk", k="4", hook_name="blocks.1.hook_resid_post"
    )
    assert load_external(post, spec=TINY, layer=1).hook_note is None
