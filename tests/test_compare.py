"""`abstopk_eval.compare`: one trained SAE written in four on-disk formats scores identically in all four, next
to the trained variant; bad checkpoints are refused with one-line errors (the formats themselves:
tests/saes/test_formats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from abstopk_eval import compare, run
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.saes.formats import RawSAE, default_name, raw_to_sae
from abstopk_eval.saes.io import load_sae
from tests.helpers.models import TINY
from tests.helpers.runs import sae_folder
from tests.helpers.saes import random_raw_sae, save_raw_safetensors

LAYER = 1
FORMATS = ("sae_lens", "sae_bench", "dictionary_learning", "safetensors")
DICT_CLASS = {"abstopk": "AbsTopKSAE", "batch_abstopk": "BatchAbsTopKSAE"}


def _dirs(tmp: Path) -> list[str]:
    return [
        "--results-dir",
        str(tmp / "results"),
        "--runs-dir",
        str(tmp / "runs"),
        "--reports-dir",
        str(tmp / "reports"),
        "--cache-dir",
        str(tmp / "cache"),
    ]


def _raw(sae, activation: str) -> RawSAE:
    threshold = sae.threshold.detach().clone() if hasattr(sae, "threshold") else None
    k = getattr(sae.cfg, "k", None)
    return RawSAE(
        W_enc=sae.W_enc.detach().clone(),
        W_dec=sae.W_dec.detach().clone(),
        b_enc=sae.b_enc.detach().clone(),
        b_dec=sae.b_dec.detach().clone(),
        activation=activation,
        k=k,
        threshold=threshold,
    )


def write_formats(raw: RawSAE, folder: Path, tag: str) -> dict[str, Path]:
    """The same weights as an sae_lens folder, a sae_bench state dict, a dictionary_learning ae.pt + config.json
    and a plain safetensors file (each stating model, layer and activation its own way)."""
    from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

    d_in, d_sae = raw.W_enc.shape
    paths = {}
    # (a) sae_lens: SAE.save_model of the converted SAE
    sae, _ = raw_to_sae(raw, folder)
    sae.cfg.metadata["model"] = TINY.key
    sae.cfg.metadata["hook_name"] = f"blocks.{LAYER}.hook_resid_post"
    paths["sae_lens"] = folder / f"{tag}-saelens"
    sae.save_model(paths["sae_lens"])
    # (b) sae_bench: a custom SAE's state dict with its CustomSAEConfig
    cfg = CustomSAEConfig(
        TINY.key, d_in=d_in, d_sae=d_sae, hook_layer=LAYER, hook_name=f"blocks.{LAYER}.hook_resid_post"
    )
    cfg.architecture = raw.activation
    state = {"W_enc": raw.W_enc, "W_dec": raw.W_dec, "b_enc": raw.b_enc, "b_dec": raw.b_dec}
    if raw.k is not None:
        state["k"] = torch.tensor(raw.k, dtype=torch.int)
    if raw.threshold is not None:
        state["threshold"] = raw.threshold
    paths["sae_bench"] = folder / f"{tag}-saebench.pt"
    torch.save({"state_dict": state, "cfg": cfg.to_dict()}, paths["sae_bench"])
    # (c) dictionary_learning: nn.Linear layouts in ae.pt, trainer config in config.json
    paths["dictionary_learning"] = folder / f"{tag}-dictlearn"
    paths["dictionary_learning"].mkdir()
    ae = {
        "encoder.weight": raw.W_enc.T.contiguous(),
        "encoder.bias": raw.b_enc,
        "decoder.weight": raw.W_dec.T.contiguous(),
        "b_dec": raw.b_dec,
        "k": torch.tensor(raw.k or 0, dtype=torch.int),
        "threshold": raw.threshold if raw.threshold is not None else torch.tensor(-1.0),
    }
    torch.save(ae, paths["dictionary_learning"] / "ae.pt")
    (paths["dictionary_learning"] / "config.json").write_text(
        json.dumps(
            {
                "trainer": {
                    "trainer_class": "CustomTrainer",
                    "dict_class": DICT_CLASS[raw.activation],
                    "activation_dim": d_in,
                    "dict_size": d_sae,
                    "k": raw.k,
                    "layer": LAYER,
                    "lm_name": TINY.hf_id,
                    "submodule_name": f"resid_post_layer_{LAYER}",
                },
                "buffer": {"d_submodule": d_in},
            }
        )
    )
    # (d) plain safetensors naming its activation in the metadata
    tensors = {"W_enc": raw.W_enc, "W_dec": raw.W_dec, "b_enc": raw.b_enc, "b_dec": raw.b_dec}
    if raw.threshold is not None:
        tensors["threshold"] = raw.threshold
    meta = {"activation": raw.activation, "model": TINY.key, "layer": str(LAYER)}
    if raw.k is not None:
        meta["k"] = str(raw.k)
    paths["safetensors"] = folder / f"{tag}-plain.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, paths["safetensors"], metadata=meta)
    return paths


@pytest.fixture(scope="module")
def compared(tiny_model_dir, tmp_path_factory):
    """Train an AbsTopK and a batch-level AbsTopK SAE, write each in four formats, compare all eight."""
    MODEL_REGISTRY[TINY.key] = TINY
    tmp = tmp_path_factory.mktemp("compare")
    common = [
        "--model",
        TINY.key,
        "--layer",
        str(LAYER),
        "--model-path",
        str(tiny_model_dir),
        "--preset",
        "smoke",
        "--evals",
        "core",
        "-q",
        *_dirs(tmp),
    ]
    run.main([*common, "--variants", "abstopk", "batch-abstopk", "--no-report"])
    trained = {"abstopk": "abstopk_k4_s0_smoke", "batch_abstopk": "batch-abstopk_k4_s0_smoke"}
    checkpoints = tmp / "checkpoints"
    checkpoints.mkdir()
    paths = {}
    for activation, sid in trained.items():
        raw = _raw(load_sae(sae_folder(tmp / "runs", TINY.key, LAYER, sid) / "sae"), activation)
        if activation == "batch_abstopk":
            raw.k = None
        for fmt, path in write_formats(raw, checkpoints, activation.replace("_", "")).items():
            paths[(activation, fmt)] = path
    compare.main([*map(str, paths.values()), *common])
    yield tmp, trained, paths
    MODEL_REGISTRY.pop(TINY.key, None)


def _metrics(tmp: Path, name: str) -> dict:
    return json.loads((sae_folder(tmp / "results", TINY.key, LAYER, name) / "core.json").read_text())


@pytest.mark.parametrize("activation", ["abstopk", "batch_abstopk"])
def test_four_formats_give_identical_metrics(compared, activation):
    tmp, trained, paths = compared
    results = {fmt: _metrics(tmp, default_name(paths[(activation, fmt)])) for fmt in FORMATS}
    reference = results["sae_lens"]["eval_result_metrics"]
    for fmt, result in results.items():
        assert result["eval_result_metrics"] == reference, fmt
        prov = result["provenance"]
        assert prov["source_format"] == fmt
        assert prov["source_path"] == str(paths[(activation, fmt)].resolve())
        assert len(prov["source_sha256"]) == 64 and len(prov["sae_weights_sha256"]) == 64
        assert prov["external"]["signed_latents"] is True
    assert reference["sparsity"]["frac_negative"] > 0  # signs survived every conversion
    # the same weights as the trained variant next to them: the same scores, up to float rounding
    ours = _metrics(tmp, trained[activation])["eval_result_metrics"]
    for category in ("normalised_reconstruction", "sparsity", "model_performance_preservation"):
        for key, value in ours[category].items():
            if isinstance(value, float):
                assert reference[category][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (category, key)


def test_report_lists_external_checkpoints_beside_trained_variants(compared):
    tmp, trained, paths = compared
    table = (tmp / "reports" / f"{TINY.key}_layer{LAYER}_smoke.md").read_text()
    assert "abstopk" in table
    for path in paths.values():
        assert default_name(path) in table


def test_rerun_skips_current_results(compared, tiny_model_dir, tiny_registered, monkeypatch):
    from abstopk_eval import workflow

    tmp, _, paths = compared
    monkeypatch.setattr(workflow, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    path = next(iter(paths.values()))
    before = _metrics(tmp, default_name(path))["eval_id"]
    compare.main(
        [
            str(path),
            "--model",
            TINY.key,
            "--layer",
            str(LAYER),
            "--model-path",
            str(tiny_model_dir),
            "--preset",
            "smoke",
            "--evals",
            "core",
            "-q",
            "--no-report",
            *_dirs(tmp),
        ]
    )
    assert _metrics(tmp, default_name(path))["eval_id"] == before


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"activation": "abstopk", "k": "4", "model": "gpt2"}, "is for model 'gpt2', not tiny-test"),
        ({"activation": "abstopk", "k": "4", "layer": "2"}, "is for layer 2, not --layer 1"),
        ({"activation": "abstopk", "k": "4", "hook_name": "blocks.1.hook_mlp_out"}, "not the residual stream"),
        ({"activation": "sigmoid"}, "unknown SAE activation 'sigmoid'"),
        ({"k": "4"}, "does not name its activation"),
        ({"activation": "topk"}, "needs k"),
        ({"activation": "batchtopk"}, "needs an inference threshold"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, tiny_registered, capsys, meta, message):
    path = save_raw_safetensors(tmp_path / "sae.safetensors", random_raw_sae(), **meta)
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(path), "--model", TINY.key, "--layer", "1", "--no-report", *_dirs(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


# ------------------------------------------------------------------------------------- published SAEs


def test_published_release_is_compared_with_its_ids_recorded(tmp_path, tiny_model_dir, tiny_registered, monkeypatch):
    """`--release R --sae-id ID` loads through sae_lens from an offline HF cache; the result names release and id
    in sae_bench's fields; a rerun skips current results and --force-rerun evaluates again."""
    from tests.helpers.hub import legacy_cfg, offline_release, scaled_decoder
    from tests.helpers.saes import random_sae

    relu = scaled_decoder(random_sae("relu", seed=5))
    pre_id = "blocks.2.hook_resid_pre"
    rel = offline_release(
        monkeypatch,
        tmp_path / "hub",
        {pre_id: (relu, legacy_cfg(relu, model=TINY.hf_id, hook_name=pre_id, hook_layer=2))},
        model=TINY.key,
    )
    argv = [
        "--release",
        rel.release,
        "--sae-id",
        pre_id,
        "--model",
        TINY.key,
        "--layer",
        str(LAYER),
        "--model-path",
        str(tiny_model_dir),
        "--preset",
        "smoke",
        "--evals",
        "core",
        "-q",
        "--no-report",
        *_dirs(tmp_path),
    ]
    compare.main(argv)
    name = f"ext-{rel.release}-{pre_id}"
    result = _metrics(tmp_path, name)
    assert result["sae_lens_release_id"] == rel.release and result["sae_lens_id"] == pre_id
    prov = result["provenance"]
    assert prov["source_format"] == "sae_lens_release" and prov["external"]["hf_revision"] == rel.commit
    assert "blocks.1.hook_resid_post" in prov["hook_note"]
    assert result["eval_result_metrics"]["sparsity"]["l0"] > 0
    first = result["eval_id"]
    compare.main(argv)
    assert _metrics(tmp_path, name)["eval_id"] == first
    compare.main([*argv, "--force-rerun"])
    again = _metrics(tmp_path, name)
    assert again["eval_id"] != first
    assert again["eval_result_metrics"] == result["eval_result_metrics"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to compare"),
        (["--sae-regex-pattern", "no-such-release-.*", "--sae-block-pattern", ".*"], "no SAE in sae_lens's"),
        (["--sae-regex-pattern", "("], "pair up"),
        (["--release", "gpt2-small-res-jb", "--sae-id", "blocks.7.hook_resid_pre"], "is for model 'gpt2-small'"),
    ],
)
def test_bad_published_selections_are_one_line_errors(tmp_path, tiny_registered, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        compare.main([*args, "--model", TINY.key, "--layer", "1", "--no-report", *_dirs(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
