"""What every evaluation receives, and the registry the runner iterates over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from sae_lens import SAE

from abstopk_eval.provenance import RunProvenance, SaeProvenance
from abstopk_eval.registry import Registry


class ActivationSource(Protocol):
    """Held-out activations at the SAE's layer (special positions of `models.sequence_start` excluded), as an
    [n, d_in] float tensor."""

    def __call__(self) -> torch.Tensor: ...


@dataclass
class EvalContext:
    """Shared inputs of one (model, layer) evaluation run."""

    adapter: Any
    """abstopk_eval.models.adapter.ModelAdapter (or a compatible object in tests)."""
    model_key: str
    model_name: str
    layer: int
    eval_tokens: torch.Tensor
    """Held-out packed token sequences [N, T] (starting as `models.sequence_start` says) for loss-based metrics."""
    heldout_activations: ActivationSource
    dataset: str
    """Human-readable description of the held-out text (corpus, split, source package)."""
    provenance: RunProvenance = field(default_factory=RunProvenance)
    """What every result of this run records about the model and data (a mapping of its fields is accepted)."""
    sae_provenance: dict[str, SaeProvenance] = field(default_factory=dict)
    """sae_id -> what its results record about it (weights digest, source); derived from the SAE when absent."""
    training_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    """sae_id -> training.json contents (training curve, time), when the SAE was trained here."""
    batch_size: int = 4
    device: str = "cpu"
    eval_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-evaluation config overrides, eval name -> {field: value} (e.g. {"scr": {"dataset_source": "sae_bench"}});
    see `abstopk_eval.evals.options`."""
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """eval name -> {method: eval output} of the references an evaluation scored without an SAE (steering's
    unsteered model and Difference-in-Means); filled by `add_baseline`, written by the runner as the layer's
    baselines (`results.baseline_path`), never as SAE results."""

    def __post_init__(self) -> None:
        self.provenance = RunProvenance.coerce(self.provenance)

    def add_baseline(self, eval_name: str, method: str, output: Any) -> None:
        """Record a baseline of `eval_name`; a rerun of the evaluation on this context replaces it."""
        self.baselines.setdefault(eval_name, {})[method] = output


EvalFn = Callable[[EvalContext, dict[str, SAE]], dict[str, Any]]
"""(context, {sae_id: SAE}) -> {sae_id: eval output (a pydantic dataclass of the sae_bench schema)}, one entry per
SAE given and nothing else: outputs that score no SAE go to `EvalContext.add_baseline`."""


@dataclass(frozen=True)
class EvalSpec:
    name: str
    description: str
    run: EvalFn
    config_cls: type
    """The evaluation's config (a pydantic dataclass on sae_bench's BaseEvalConfig): its fields are the options
    `--eval-option NAME.KEY=VALUE` may set, typed by their annotations."""
    output_cls: type | None = None
    """The result schema (a pydantic dataclass of sae_bench's BaseEvalOutput): `python -m abstopk_eval.verify`
    checks every stored result of this evaluation against it."""
    in_default_run: bool = True
    """Run when no --evals is given; False for evaluations that need a particular kind of model (steering
    needs an instruction-tuned model with a chat template) and are asked for by name."""


EVALS: Registry[EvalSpec] = Registry("evaluation")


def register_eval(spec: EvalSpec) -> EvalSpec:
    return EVALS.register(spec.name, spec)


def get_eval(name: str) -> EvalSpec:
    return EVALS.lookup(name)


DEFAULT_ORDER: tuple[str, ...] = (
    "core",
    "scr",
    "sparse_probing",
    "tpp",
    "absorption",
    "ravel",
    "unlearning",
    "fragmentation",
    "bidirectional",
    "steering",
)
"""The order in which a run performs the built-in evaluations (cheap and widely needed first; TPP after sparse
probing, whose model pass it reuses). Evaluations registered elsewhere run after these, in registration order."""


def ordered_evals(names: list[str] | None = None) -> list[str]:
    """`names` (default: every registered evaluation) in the declared order, duplicates removed."""
    chosen = list(dict.fromkeys(names if names is not None else EVALS))
    rank = {name: i for i, name in enumerate(DEFAULT_ORDER)}
    return sorted(chosen, key=lambda name: (rank.get(name, len(rank)), list(EVALS).index(name) if name in EVALS else 0))


def default_evals() -> list[str]:
    """The evaluations a run performs when none are named, in the declared order."""
    return [name for name in ordered_evals() if EVALS[name].in_default_run]


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"
