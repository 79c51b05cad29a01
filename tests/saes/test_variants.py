"""The variant registry: every behavioural decision is declared on the variant and read from there.

A variant registered under a new name trains with the rule it declares (not a rule guessed from its name),
exports the declared architecture, and a registration that leaves a decision open or contradicts its build
fails when it is registered.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
from sae_lens.saes.abstopk_sae import AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from safetensors.torch import save_file

from abstopk_eval.config import get_preset
from abstopk_eval.models.registry import ModelSpec
from abstopk_eval.saes.batch_abstopk import BatchAbsTopKTrainingSAE, BatchAbsTopKTrainingSAEConfig
from abstopk_eval.saes.formats import ACTIVATIONS, activation_name, canonical_activation, load_external
from abstopk_eval.saes.io import export_inference_sae, load_sae
from abstopk_eval.saes.signs import has_signed_latents, signed_architectures
from abstopk_eval.saes.variants import (
    ALL_VARIANTS,
    VARIANTS,
    InferenceRule,
    SelectionRule,
    SparsityHyperparams,
    TrainingPath,
    VariantSpec,
    get_variant,
    register_variant,
    sae_id,
)
from abstopk_eval.training import trainer
from abstopk_eval.training.sparse_ksae import sparse_training_forward
from abstopk_eval.training.trainer import TrainJob, train_jobs

D_IN, K = 8, 2
PRESET = get_preset("smoke")  # 32 steps of 64 rows, d_sae = 16


def _k_sparse_build(cfg_cls, sae_cls):
    """A builder like the registry's own k-sparse ones, from existing sae_lens classes."""

    def build(d_in: int, d_sae: int, hp: SparsityHyperparams):
        cfg = cfg_cls(d_in=d_in, d_sae=d_sae, k=hp.k, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=True)
        return sae_cls(cfg)

    return build


def _spec(**overrides) -> VariantSpec:
    fields = {
        "name": "a-test-variant",
        "description": "a test variant",
        "selection": SelectionRule.PER_SAMPLE_TOPK,
        "signed": True,
        "inference": InferenceRule.PER_SAMPLE_TOPK,
        "training_path": TrainingPath.SPARSE_KSAE,
        "renormalise_decoder": False,
        "architecture": "abstopk",
        "build": _k_sparse_build(AbsTopKTrainingSAEConfig, AbsTopKTrainingSAE),
    }
    return VariantSpec(**(fields | overrides))


NEW_VARIANTS = {
    "signed-per-sample": _spec(name="signed-per-sample"),
    "signed-per-batch": _spec(
        name="signed-per-batch",
        selection=SelectionRule.BATCH_TOPK,
        inference=InferenceRule.RUNNING_THRESHOLD,
        architecture="batch_abstopk",
        build=_k_sparse_build(BatchAbsTopKTrainingSAEConfig, BatchAbsTopKTrainingSAE),
    ),
    "plain-per-sample": _spec(
        name="plain-per-sample",
        signed=False,
        architecture="topk",
        build=_k_sparse_build(TopKTrainingSAEConfig, TopKTrainingSAE),
    ),
}
"""New names, so nothing can key off a built-in variant's name."""


@pytest.fixture
def registered(request):
    """Register the variant named by the test's parameter for the test only."""
    spec = register_variant(NEW_VARIANTS[request.param])
    yield spec
    del VARIANTS[spec.name]


def _data(n: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(24, D_IN, generator=g)
    codes = torch.randn(n, 24, generator=g) * (torch.rand(n, 24, generator=g) < 0.15)
    return codes @ atoms + 0.01 * torch.randn(n, D_IN, generator=g)  # no all-zero rows


def _stream(seed: int):
    data = _data()

    def stream(start: int):
        g = torch.Generator().manual_seed(seed)
        for step in range(PRESET.total_steps):
            idx = torch.randperm(data.shape[0], generator=g)[: PRESET.batch_size]
            if step >= start:
                yield data[idx]

    return stream


@pytest.mark.parametrize("registered", list(NEW_VARIANTS), indirect=True)
def test_a_new_variant_matches_sae_lens_dense_step_with_its_declared_rule(registered):
    torch.manual_seed(0)
    sae = registered.build(D_IN, 32, SparsityHyperparams(k=K))
    x = torch.randn(40, D_IN)
    dead = torch.arange(32) % 4 == 0
    dense = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    )
    sparse = sparse_training_forward(sae, x, registered, dead)
    acts = torch.zeros(40, 32).index_put_((sparse.active.rows, sparse.active.cols), sparse.values)
    assert torch.allclose(acts, dense.feature_acts, atol=1e-5)
    assert torch.allclose(sparse.loss, dense.loss, rtol=1e-5)


@pytest.mark.parametrize("registered", list(NEW_VARIANTS), indirect=True)
def test_a_new_variant_trains_through_the_sparse_path_with_its_declared_rule(registered, tmp_path, monkeypatch):
    steps = []

    def recording_forward(sae, x, variant, dead, encoder_dtype=None):
        out = sparse_training_forward(sae, x, variant, dead, encoder_dtype)
        nonzero = out.values != 0
        per_row = torch.bincount(out.active.rows[nonzero], minlength=x.shape[0])
        steps.append((variant.name, per_row, bool((out.values < 0).any())))
        return out

    monkeypatch.setattr(trainer, "sparse_training_forward", recording_forward)
    job = TrainJob(registered.name, K, 0, PRESET.name, tmp_path / registered.name)
    assert job.sae_id == sae_id(registered.name, K, 0, PRESET.name) == f"{registered.name}_k{K}_s0_smoke"
    train_jobs([job], _stream, d_in=D_IN, preset=PRESET, mean=torch.zeros(D_IN), scale=1.0, metadata={})

    assert len(steps) == PRESET.total_steps and {name for name, _, _ in steps} == {registered.name}
    B = PRESET.batch_size
    if registered.selection is SelectionRule.PER_SAMPLE_TOPK:
        if registered.signed:  # the ReLU of unsigned rules may leave a row fewer than k positive values
            assert all(bool((per_row == K).all()) for _, per_row, _ in steps)
        assert all(bool((per_row <= K).all()) for _, per_row, _ in steps)
    else:
        assert all(int(per_row.sum()) == B * K for _, per_row, _ in steps)
        assert any(bool((per_row != K).any()) for _, per_row, _ in steps)  # rows share the batch's B*k
    assert any(negative for _, _, negative in steps) == registered.signed

    cfg = json.loads((job.sae_dir / "cfg.json").read_text())
    assert cfg["architecture"] == registered.architecture
    sae = load_sae(job.sae_dir)
    assert has_signed_latents(sae) == registered.signed
    z = sae.encode(_data(256, seed=1))
    assert bool((z < 0).any()) == registered.signed
    if registered.inference is InferenceRule.RUNNING_THRESHOLD:  # the threshold was tracked while training
        assert bool((sae.threshold > 0).all())
    else:
        assert cfg["k"] == K and bool(((z != 0).sum(-1) <= K).all())
    activation = ACTIVATIONS[canonical_activation(registered.name)]  # external formats know it too
    assert (activation.name, activation.architecture, activation.signed) == (
        activation_name(registered.name),
        registered.architecture,
        registered.signed,
    )


def test_every_decision_is_required():
    fields = {f.name for f in dataclasses.fields(VariantSpec)}
    assert fields == {
        "name",
        "description",
        "selection",
        "signed",
        "inference",
        "training_path",
        "renormalise_decoder",
        "architecture",
        "build",
    }
    complete = _spec()
    full = {name: getattr(complete, name) for name in fields}
    for missing in fields:
        with pytest.raises(TypeError, match=missing):
            VariantSpec(**{k: v for k, v in full.items() if k != missing})


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"selection": SelectionRule.THRESHOLD, "inference": InferenceRule.ACTIVATION_THRESHOLD}, "signed threshold"),
        ({"inference": InferenceRule.RUNNING_THRESHOLD}, "inference rule must be per-sample top-k"),
        ({"selection": SelectionRule.BATCH_TOPK}, "inference rule must be running threshold"),
        ({"training_path": TrainingPath.SPARSE_THRESHOLD}, "does not implement per-sample top-k"),
        (
            {
                "selection": SelectionRule.THRESHOLD,
                "inference": InferenceRule.ACTIVATION_THRESHOLD,
                "signed": False,
                "training_path": TrainingPath.SPARSE_KSAE,
            },
            "does not implement threshold",
        ),
        ({"selection": "per-sample top-k"}, "selection must be a SelectionRule"),
        ({"signed": 1}, "signed must be a bool"),
        ({"name": "signed_test"}, "hyphens"),
        ({"architecture": ""}, "architecture is empty"),
    ],
)
def test_an_inconsistent_declaration_fails_when_declared(overrides, message):
    with pytest.raises(ValueError, match=message):
        _spec(**overrides)


@dataclass
class _SignedTopKExport(AbsTopKTrainingSAEConfig):
    """Signed training that would save as the unsigned `topk` architecture."""

    def get_inference_config_class(self):
        return TopKSAEConfig


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"architecture": "batch_abstopk"}, "saves as architecture 'abstopk', not 'batch_abstopk'"),
        ({"signed": False, "architecture": "topk"}, "saves as architecture 'abstopk'.*keeps negative values"),
        ({"build": _k_sparse_build(TopKTrainingSAEConfig, TopKTrainingSAE), "architecture": "topk"}, "drops negative"),
        (
            {"selection": SelectionRule.BATCH_TOPK, "inference": InferenceRule.RUNNING_THRESHOLD},
            r"lacks the running threshold.*keeps \[2, 2\] latents per row, not \[4, 0\]",
        ),
        (
            {
                "build": lambda d_in, d_sae, hp: AbsTopKTrainingSAE(
                    AbsTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=hp.k, rescale_acts_by_decoder_norm=False)
                )
            },
            "sparse k-SAE kernels need rescale_acts_by_decoder_norm",
        ),
        (
            {"build": _k_sparse_build(_SignedTopKExport, AbsTopKTrainingSAE), "architecture": "topk"},
            "architecture 'topk' is already exported by the unsigned variant 'topk'",
        ),
        ({"build": lambda d_in, d_sae, hp: 1 / 0}, "building a tiny instance failed .ZeroDivisionError"),
        ({"name": "abstopk"}, "already registered"),
    ],
)
def test_a_build_contradicting_its_declaration_fails_at_registration(overrides, message):
    spec = _spec(**overrides)
    before = dict(VARIANTS)
    with pytest.raises(ValueError, match=message):
        register_variant(spec)
    assert dict(VARIANTS) == before


def test_uses_k_follows_the_selection_rule():
    assert [v for v in ALL_VARIANTS if get_variant(v).uses_k] == ["topk", "batchtopk", "abstopk", "batch-abstopk"]
    assert sae_id("relu", 64, 1) == "relu_s1" and sae_id("abstopk", 64, 1, "paper") == "abstopk_k64_s1_paper"


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_has_signed_latents_is_true_exactly_for_signed_variants_checkpoints(variant, tmp_path):
    spec = get_variant(variant)
    assert (spec.architecture in signed_architectures()) == spec.signed
    torch.manual_seed(0)
    training_sae = spec.build(D_IN, 16, SparsityHyperparams(k=K, l1_coefficient=1.0, l0_coefficient=1.0))
    export_inference_sae(training_sae, tmp_path / "sae", mean=torch.zeros(D_IN), scale=1.0, metadata={})
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.architecture() == spec.architecture
    assert has_signed_latents(sae) == spec.signed

    # the same variant read from another tool's file (safetensors naming the activation) agrees
    weights = {name: sae.state_dict()[name].contiguous() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if hasattr(sae, "threshold"):
        weights["threshold"] = sae.threshold.detach().abs().contiguous()
    path = tmp_path / "external.safetensors"
    save_file(weights, str(path), metadata={"activation": activation_name(variant), "k": str(K)})
    model = ModelSpec(key="m", source="hub", hf_id="m", n_layers=1, d_model=D_IN, context_size=8, paper_k=K)
    external = load_external(path, spec=model, layer=0)
    assert external.activation == activation_name(variant)
    assert external.architecture == spec.architecture
    assert external.signed == has_signed_latents(external.sae) == spec.signed
