"""The six SAE variants, as a small typed registry over sae_lens training configs.

Each `VariantSpec` declares every behavioural decision about its variant (selection rule, signedness,
inference rule, training path, decoder renormalisation, exported architecture); the trainer, the sparse
kernels, `signs.has_signed_latents` and the checkpoint converters (`formats.py`) read those fields and
never compare variant names, so a new variant needs only a builder and a registration here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from sae_lens.saes.abstopk_sae import AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from abstopk_eval.registry import Registry
from abstopk_eval.results import DEFAULT_PRESET_NAME
from abstopk_eval.saes.batch_abstopk import ARCHITECTURE as BATCH_ABSTOPK
from abstopk_eval.saes.batch_abstopk import BatchAbsTopKTrainingSAE, BatchAbsTopKTrainingSAEConfig


@dataclass(frozen=True)
class SparsityHyperparams:
    """Variant-specific sparsity settings (the k-sparse variants only use `k` and the aux-k coefficient)."""

    k: int = 0
    l1_coefficient: float = 0.0
    """ReLU SAE: weight of sum_i |z_i| * ||d_i||."""
    l0_coefficient: float = 0.0
    """JumpReLU SAE: weight of the (STE) L0 penalty."""
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.1
    jumprelu_sparsity_loss_mode: str = "step"
    """sae_lens mode: "step" (DeepMind's L0) or "quadratic" (GemmaScope 2: 2/k * (L0 - k)^2, target L0 = k)."""
    jumprelu_ste_to_input: bool = False
    """Straight-through gradient also reaches the pre-activations (Anthropic's setup), not only the threshold.

    With Adam the threshold moves by about lr per step, so with the threshold alone the L0 barely moves in a
    few hundred steps at our input scale (E||x||^2 = d_model); measured on gemma-3-270m L9, quick preset:
    L0 650-1,300 after 128 steps with it off (init threshold 0.1-2.0), ~62 with it on (l0 coefficient 0.5,
    init threshold 1.0)."""
    aux_loss_coefficient: float = 1 / 32


class SelectionRule(Enum):
    """Which latents a training step keeps active."""

    PER_SAMPLE_TOPK = "per-sample top-k"
    """The k largest scores of each sample."""
    BATCH_TOPK = "batch top-(B*k)"
    """The B*k largest scores of the whole batch (rows may keep more or fewer than k)."""
    THRESHOLD = "threshold"
    """A latent fires when its pre-activation clears a threshold (ReLU: 0, JumpReLU: learned); no k."""


class InferenceRule(Enum):
    """How the exported checkpoint selects latents."""

    PER_SAMPLE_TOPK = "per-sample top-k"
    """The training rule itself (k is stored in the checkpoint)."""
    RUNNING_THRESHOLD = "running threshold"
    """A per-latent threshold on u (|u| when signed) replaces the batch selection: the EMA of the smallest
    selected value, tracked while training (sae_lens's `topk_threshold` buffer)."""
    ACTIVATION_THRESHOLD = "activation threshold"
    """The training activation's own threshold (ReLU: 0, JumpReLU: the learned per-latent threshold)."""


class TrainingPath(Enum):
    """Which code computes a training step's loss and gradients (all agree with sae_lens's dense step)."""

    SPARSE_KSAE = "sparse k-SAE kernels"
    """training/sparse_ksae.py, every step."""
    SPARSE_THRESHOLD = "sparse threshold kernels once sparse"
    """training/sparse_threshold.py once few enough latents fire, sae_lens's dense step before."""
    DENSE = "sae_lens dense"
    """sae_lens's `training_forward_pass` only."""


_K_SPARSE = (SelectionRule.PER_SAMPLE_TOPK, SelectionRule.BATCH_TOPK)
_INFERENCE_OF: dict[SelectionRule, InferenceRule] = {
    SelectionRule.PER_SAMPLE_TOPK: InferenceRule.PER_SAMPLE_TOPK,
    SelectionRule.BATCH_TOPK: InferenceRule.RUNNING_THRESHOLD,
    SelectionRule.THRESHOLD: InferenceRule.ACTIVATION_THRESHOLD,
}
"""The one inference rule that sae_lens's classes (and our exports) support after each selection rule."""
_PATHS_OF: dict[TrainingPath, tuple[SelectionRule, ...]] = {
    TrainingPath.SPARSE_KSAE: _K_SPARSE,
    TrainingPath.SPARSE_THRESHOLD: (SelectionRule.THRESHOLD,),
    TrainingPath.DENSE: tuple(SelectionRule),
}
"""The selection rules each training path implements."""
_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@dataclass(frozen=True, kw_only=True)
class VariantSpec:
    """One SAE variant and every behavioural decision about it; training and evaluation read these fields.

    No field has a default, so a registration that leaves one open fails at once (TypeError), and
    combinations no code path implements fail in `__post_init__` (ValueError); `register_variant` also
    builds a tiny instance and checks that the sae_lens class does what the declaration says.
    """

    name: str
    """Lower case, digits and hyphens (run ids are `<name>_k<k>_s<seed>`, split on underscores)."""
    description: str
    selection: SelectionRule
    signed: bool
    """True: latents are ranked by |u| and keep their sign; False: ranked by u, with the ReLU (z >= 0)."""
    inference: InferenceRule
    training_path: TrainingPath
    renormalise_decoder: bool
    """Decoder rows are folded back to unit norm after every optimiser step (`fold_W_dec_norm`)."""
    architecture: str
    """sae_lens architecture of the exported inference checkpoint (batchtopk saves as `jumprelu`)."""
    build: Callable[[int, int, SparsityHyperparams], TrainingSAE]

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            problems.append("its name must be lower-case letters and digits joined by hyphens")
        for attr, kind in (
            ("selection", SelectionRule),
            ("inference", InferenceRule),
            ("training_path", TrainingPath),
            ("signed", bool),
            ("renormalise_decoder", bool),
            ("architecture", str),
        ):
            if not isinstance(getattr(self, attr), kind):
                problems.append(f"{attr} must be a {kind.__name__}, got {getattr(self, attr)!r}")
        if not callable(self.build):
            problems.append("build must be callable")
        if not problems:
            if self.signed and self.selection is SelectionRule.THRESHOLD:
                problems.append("a signed threshold rule is implemented by no sae_lens class and no kernel")
            if self.inference is not _INFERENCE_OF[self.selection]:
                problems.append(
                    f"after {self.selection.value} selection the inference rule must be "
                    f"{_INFERENCE_OF[self.selection].value}, not {self.inference.value}"
                )
            if self.selection not in _PATHS_OF[self.training_path]:
                problems.append(
                    f"training path {self.training_path.value!r} does not implement {self.selection.value} selection"
                )
            if not self.architecture:
                problems.append("architecture is empty")
        if problems:
            raise ValueError(f"SAE variant {self.name!r}: {'; '.join(problems)}")

    @property
    def uses_k(self) -> bool:
        """Sparsity is set by k (and the run id carries it)."""
        return self.selection in _K_SPARSE


def _topk_family(cfg_cls, sae_cls):
    def build(d_in: int, d_sae: int, hp: SparsityHyperparams) -> TrainingSAE:
        cfg = cfg_cls(
            d_in=d_in,
            d_sae=d_sae,
            k=hp.k,
            aux_loss_coefficient=hp.aux_loss_coefficient,
            rescale_acts_by_decoder_norm=True,
            apply_b_dec_to_input=True,
        )
        return sae_cls(cfg)

    return build


def _relu(d_in: int, d_sae: int, hp: SparsityHyperparams) -> TrainingSAE:
    cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=hp.l1_coefficient, apply_b_dec_to_input=True)
    return StandardTrainingSAE(cfg)


def _jumprelu(d_in: int, d_sae: int, hp: SparsityHyperparams) -> TrainingSAE:
    cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        l0_coefficient=hp.l0_coefficient,
        jumprelu_bandwidth=hp.jumprelu_bandwidth,
        jumprelu_init_threshold=hp.jumprelu_init_threshold,
        jumprelu_sparsity_loss_mode=hp.jumprelu_sparsity_loss_mode,
        jumprelu_ste_to_input=hp.jumprelu_ste_to_input,
        target_l0=float(hp.k) if hp.jumprelu_sparsity_loss_mode == "quadratic" else None,
        apply_b_dec_to_input=True,
    )
    return JumpReLUTrainingSAE(cfg)


VARIANTS: Registry[VariantSpec] = Registry("SAE variant")


_PROBE_D_IN, _PROBE_D_SAE, _PROBE_K = 2, 8, 2


@torch.no_grad()
def _contradictions(spec: VariantSpec) -> list[str]:
    """What a tiny instance of `spec.build` does that its declaration does not say (empty when consistent).

    The sparse kernels implement the declared rule while sae_lens's dense step runs the built class, so
    the two must agree. The activation is run on two samples whose pre-activations differ tenfold in
    scale (all positive, then all negative): per-sample top-k keeps k latents in each row, batch top-k
    keeps the B*k latents of the first row, and only signed rules keep negative values.
    """
    with torch.random.fork_rng(devices=[]):  # registration leaves the global RNG as it found it
        sae = spec.build(_PROBE_D_IN, _PROBE_D_SAE, SparsityHyperparams(k=_PROBE_K))
    cfg, problems = sae.cfg, []
    exported = cfg.get_inference_config_class().architecture()
    if exported != spec.architecture:
        problems.append(f"its checkpoint saves as architecture {exported!r}, not {spec.architecture!r}")
    running = spec.inference is InferenceRule.RUNNING_THRESHOLD
    if running != hasattr(sae, "topk_threshold"):
        problems.append(f"the built SAE {'lacks' if running else 'has'} the running threshold `topk_threshold`")
    if spec.uses_k and getattr(cfg, "k", None) != _PROBE_K:
        problems.append("the built config does not take k from SparsityHyperparams.k")
    if spec.training_path is TrainingPath.SPARSE_KSAE and not (
        getattr(cfg, "rescale_acts_by_decoder_norm", False) and cfg.apply_b_dec_to_input
    ):
        problems.append("the sparse k-SAE kernels need rescale_acts_by_decoder_norm and apply_b_dec_to_input")
    sae.W_enc.zero_()
    sae.W_enc[0] = 1.0
    sae.b_enc.copy_(torch.linspace(0.1, 0.8, _PROBE_D_SAE))
    sae.b_dec.zero_()
    sae.W_dec.zero_()
    sae.W_dec[:, 0] = 1.0
    x = torch.tensor([[10.0, 0.0], [1.0, 0.0]])
    counts = (sae.encode(x) != 0).sum(-1).tolist()
    expected = {
        SelectionRule.PER_SAMPLE_TOPK: [_PROBE_K, _PROBE_K],
        SelectionRule.BATCH_TOPK: [2 * _PROBE_K, 0],
    }.get(spec.selection)
    if expected is not None and counts != expected:
        problems.append(f"its activation keeps {counts} latents per row, not {expected} ({spec.selection.value})")
    sae.b_enc.neg_()
    if bool((sae.encode(-x) < 0).any()) != spec.signed:
        problems.append("its activation " + ("drops negative values" if spec.signed else "keeps negative values"))
    return problems


def register_variant(spec: VariantSpec) -> VariantSpec:
    """Add `spec` to the registry; ValueError if its build contradicts it or its architecture's signedness.

    has_signed_latents tells signed SAEs by architecture, so one architecture cannot be exported by both
    a signed and an unsigned variant.
    """
    problems = [
        f"architecture {spec.architecture!r} is already exported by the "
        f"{'signed' if other.signed else 'unsigned'} variant {other.name!r}"
        for other in VARIANTS.values()
        if other.architecture == spec.architecture and other.signed != spec.signed
    ]
    try:
        problems += _contradictions(spec)
    except Exception as err:  # a builder failing on a tiny instance, whatever it raises
        problems.append(f"building a tiny instance failed ({err.__class__.__name__}: {err})")
    if problems:
        raise ValueError(f"SAE variant {spec.name!r}: {'; '.join(problems)}")
    return VARIANTS.register(spec.name, spec)


register_variant(
    VariantSpec(
        name="relu",
        description="ReLU + L1 penalty (sae_lens standard)",
        selection=SelectionRule.THRESHOLD,
        signed=False,
        inference=InferenceRule.ACTIVATION_THRESHOLD,
        training_path=TrainingPath.SPARSE_THRESHOLD,
        renormalise_decoder=True,
        architecture="standard",
        build=_relu,
    )
)
register_variant(
    VariantSpec(
        name="jumprelu",
        description="JumpReLU, L0 penalty, straight-through estimator (bandwidth 0.001)",
        selection=SelectionRule.THRESHOLD,
        signed=False,
        inference=InferenceRule.ACTIVATION_THRESHOLD,
        training_path=TrainingPath.SPARSE_THRESHOLD,
        renormalise_decoder=True,
        architecture="jumprelu",
        build=_jumprelu,
    )
)
register_variant(
    VariantSpec(
        name="topk",
        description="per-sample TopK, z >= 0",
        selection=SelectionRule.PER_SAMPLE_TOPK,
        signed=False,
        inference=InferenceRule.PER_SAMPLE_TOPK,
        training_path=TrainingPath.SPARSE_KSAE,
        renormalise_decoder=False,
        architecture="topk",
        build=_topk_family(TopKTrainingSAEConfig, TopKTrainingSAE),
    )
)
register_variant(
    VariantSpec(
        name="batchtopk",
        description="batch-level TopK (B*k over the batch), z >= 0; inference threshold",
        selection=SelectionRule.BATCH_TOPK,
        signed=False,
        inference=InferenceRule.RUNNING_THRESHOLD,
        training_path=TrainingPath.SPARSE_KSAE,
        renormalise_decoder=False,
        architecture="jumprelu",  # sae_lens saves a BatchTopK SAE as a JumpReLU with its threshold
        build=_topk_family(BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE),
    )
)
register_variant(
    VariantSpec(
        name="abstopk",
        description="per-sample AbsTopK: k largest |u| keep their sign (sae_lens abstopk)",
        selection=SelectionRule.PER_SAMPLE_TOPK,
        signed=True,
        inference=InferenceRule.PER_SAMPLE_TOPK,
        training_path=TrainingPath.SPARSE_KSAE,
        renormalise_decoder=False,
        architecture="abstopk",
        build=_topk_family(AbsTopKTrainingSAEConfig, AbsTopKTrainingSAE),
    )
)
register_variant(
    VariantSpec(
        name="batch-abstopk",
        description="batch-level AbsTopK (the paper's official form); inference |u| threshold",
        selection=SelectionRule.BATCH_TOPK,
        signed=True,
        inference=InferenceRule.RUNNING_THRESHOLD,
        training_path=TrainingPath.SPARSE_KSAE,
        renormalise_decoder=False,
        architecture=BATCH_ABSTOPK,
        build=_topk_family(BatchAbsTopKTrainingSAEConfig, BatchAbsTopKTrainingSAE),
    )
)


ALL_VARIANTS: tuple[str, ...] = tuple(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    return VARIANTS.lookup(name)


def sae_id(variant: str, k: int, seed: int, preset: str = DEFAULT_PRESET_NAME) -> str:
    """Directory name of one trained SAE: `<variant>[_k<k>]_s<seed>[_<preset>]`.

    k is left out for variants without one (relu, jumprelu); the preset only when it is not `quick`.
    """
    spec = get_variant(variant)
    name = f"{variant}_k{k}_s{seed}" if spec.uses_k else f"{variant}_s{seed}"
    return name if preset == DEFAULT_PRESET_NAME else f"{name}_{preset}"


def training_config_class(sae: TrainingSAE) -> type[TrainingSAEConfig]:
    return type(sae.cfg)
