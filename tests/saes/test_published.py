"""`abstopk_eval.saes.published`: sae_lens releases load through `SAE.from_pretrained` from an offline Hugging Face
cache (the real huggingface_hub and sae_lens code), are selected by id or SAEBench-style regex, and are refused with
one-line errors when unknown, for another model or layer, or absent from the cache."""

from __future__ import annotations

import pytest
import torch

from abstopk_eval.errors import UserError
from abstopk_eval.saes.published import PublishedRef, load_published, resolve, select
from tests.helpers.hub import legacy_cfg, offline_release, scaled_decoder
from tests.helpers.models import TINY
from tests.helpers.saes import random_sae

PRE_ID = "blocks.2.hook_resid_pre"
SIGNED_ID = "abstopk/blocks.1.hook_resid_post"


@pytest.fixture
def release(tmp_path, monkeypatch, tiny_registered):
    relu = scaled_decoder(random_sae("relu", seed=3))
    signed = random_sae("abstopk", seed=4)
    signed.cfg.metadata["model_name"] = TINY.key
    signed.cfg.metadata["hook_name"] = "blocks.1.hook_resid_post"
    folders = {
        PRE_ID: (relu, legacy_cfg(relu, model=TINY.key, hook_name=PRE_ID, hook_layer=2)),
        SIGNED_ID: signed,
    }
    rel = offline_release(monkeypatch, tmp_path / "hub", folders, model=TINY.key)
    return rel, relu, signed


def test_release_loads_offline_through_sae_lens(release):
    rel, relu, signed = release
    x = torch.randn(7, TINY.d_model)
    pre = load_published(PublishedRef(rel.release, PRE_ID), spec=TINY, layer=1)
    assert (pre.format, pre.activation, pre.architecture, pre.signed) == ("sae_lens_release", "relu", "standard", False)
    assert pre.decoder_norms_folded  # unit decoder rows, the same function
    torch.testing.assert_close(pre.sae.decode(pre.sae.encode(x)), relu.decode(relu.encode(x)), rtol=1e-5, atol=1e-5)
    assert "blocks.1.hook_resid_post" in pre.hook_note
    prov = pre.provenance
    assert prov["sae_lens_release"] == rel.release and prov["sae_lens_id"] == PRE_ID
    assert prov["hf_repo_id"] == rel.repo_id and prov["hf_revision"] == rel.commit
    assert prov["source_path"] == f"hf://{rel.repo_id}/{PRE_ID}" and len(prov["source_sha256"]) == 64

    abs_sae = load_published(PublishedRef(rel.release, SIGNED_ID), spec=TINY, layer=1)
    assert (abs_sae.activation, abs_sae.k, abs_sae.signed, abs_sae.hook_note) == ("abstopk", 4, True, None)
    torch.testing.assert_close(abs_sae.sae.encode(x), signed.encode(x))
    assert (abs_sae.sae.encode(x) < 0).any()

    with pytest.raises(UserError, match=r"is for layer 1 \(blocks.2.hook_resid_pre\), not --layer 2"):
        load_published(PublishedRef(rel.release, PRE_ID), spec=TINY, layer=2)


def test_selection_by_id_and_by_saebench_regex(release):
    rel, _, _ = release
    assert resolve([rel.release], [PRE_ID, SIGNED_ID]) == [
        PublishedRef(rel.release, PRE_ID),
        PublishedRef(rel.release, SIGNED_ID),
    ]
    assert select([r"tiny-test-rel.*"], [r"blocks\.\d+\.hook_resid_pre"]) == [PublishedRef(rel.release, PRE_ID)]
    assert select([rel.release, rel.release], [r".*post", r".*pre"]) == [
        PublishedRef(rel.release, SIGNED_ID),
        PublishedRef(rel.release, PRE_ID),
    ]
    with pytest.raises(UserError, match="no SAE in sae_lens's pretrained-SAE directory"):
        select([r"tiny-test"], [r".*"])  # a full match, as SAEBench: a prefix is not enough
    with pytest.raises(UserError, match="pair up"):
        select([r".*"], [])
    with pytest.raises(UserError, match="did you mean tiny-test-release"):
        resolve(["tiny-test-releas"], [PRE_ID])
    with pytest.raises(UserError, match="has no SAE 'blocks.3.hook_resid_pre'"):
        resolve([rel.release], ["blocks.3.hook_resid_pre"])
    with pytest.raises(UserError, match="--release and --sae-id go together"):
        resolve([rel.release], [])


def test_missing_from_cache_and_other_model_are_one_line_errors(release, tmp_path, monkeypatch):
    rel, _, _ = release
    for path in (rel.snapshot / PRE_ID).iterdir():
        path.unlink()
    with pytest.raises(UserError) as err:
        load_published(PublishedRef(rel.release, PRE_ID), spec=TINY, layer=1)
    assert "not in the local Hugging Face cache and the hub is offline" in str(err.value)
    assert "\n" not in str(err.value)
    other = offline_release(
        monkeypatch, tmp_path / "hub2", {"x": random_sae("topk")}, model="gpt2-small", release="other-release"
    )
    with pytest.raises(UserError, match="the release is for model 'gpt2-small', not tiny-test"):
        load_published(PublishedRef(other.release, "x"), spec=TINY, layer=1)
