"""Typed training presets (validated on construction)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from abstopk_eval.errors import UserError
from abstopk_eval.registry import Registry
from abstopk_eval.saes.variants import SparsityHyperparams


@dataclass(frozen=True)
class TrainPreset:
    """How SAEs are trained; one preset is shared by every variant of a run."""

    name: str
    expansion: int
    """d_sae = expansion * d_model."""
    lr: float
    betas: tuple[float, float]
    batch_size: int
    """Activation vectors (tokens) per optimiser step."""
    train_tokens: int
    """Tokens each SAE sees. When larger than the cache, activations are streamed from the model instead (each
    token seen once unless epochs are asked for; see `runtime.activation_source`)."""
    cache_tokens: int
    """Size of the training activation cache (one LM pass)."""
    eval_tokens: int
    """Held-out tokens whose next-token loss / KL are measured with each SAE spliced in (full LM passes)."""
    heldout_tokens: int
    """Held-out activations (one cached LM pass) for reconstruction and sparsity statistics."""
    sparsity: SparsityHyperparams
    """ReLU / JumpReLU penalties and JumpReLU settings (k comes from the run, per SAE)."""
    warmup_frac: float = 0.02
    """Linear learning-rate warm-up, as a fraction of the steps."""
    decay_frac: float = 0.2
    """Linear decay to zero over this final fraction of the steps."""
    sparsity_warmup_frac: float = 0.05
    """ReLU / JumpReLU penalty warm-up, as a fraction of the steps."""
    dead_window_tokens: int = 1_000_000
    """A latent that has not fired for this many tokens is dead (aux-k loss revives it)."""
    checkpoint_every_steps: int = 200
    log_every_steps: int = 10
    preferred_corpus: str | None = None
    """The corpus a run of this preset uses when `--corpus` is not given and it can be read from here (the paper
    preset: the Pile where the hub is reachable); None: the offline default."""

    def __post_init__(self) -> None:
        for field_name in ("expansion", "batch_size", "train_tokens", "cache_tokens", "eval_tokens", "heldout_tokens"):
            if getattr(self, field_name) <= 0:
                raise UserError(f"preset {self.name}: {field_name} must be positive")
        if not 0 <= self.warmup_frac + self.decay_frac <= 1:
            raise UserError(f"preset {self.name}: warmup_frac + decay_frac must be within [0, 1]")

    def training_identity(self) -> dict[str, Any]:
        """The fields that change a trained SAE (part of its identity; the preset's name is not)."""
        return {name: _plain(getattr(self, name)) for name in TRAINING_FIELDS}

    def eval_identity(self) -> dict[str, Any]:
        """The fields that change the evaluation data (part of every result's identity)."""
        return {name: _plain(getattr(self, name)) for name in EVAL_FIELDS}

    @property
    def total_steps(self) -> int:
        return math.ceil(self.train_tokens / self.batch_size)

    def dead_window_steps(self) -> int:
        return max(1, self.dead_window_tokens // self.batch_size)


TRAINING_FIELDS = (
    "expansion",
    "lr",
    "betas",
    "batch_size",
    "train_tokens",
    "cache_tokens",
    "sparsity",
    "warmup_frac",
    "decay_frac",
    "sparsity_warmup_frac",
    "dead_window_tokens",
)
"""TrainPreset fields that change the trained weights."""
EVAL_FIELDS = ("eval_tokens", "heldout_tokens")
"""TrainPreset fields that change the held-out data every evaluation reads."""
BOOKKEEPING_FIELDS = ("name", "checkpoint_every_steps", "log_every_steps", "preferred_corpus")
"""TrainPreset fields that change neither (a resumed run is bit-identical; the log only samples the curve; the corpus
a run uses enters its identity by itself)."""


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# Calibrated on gemma-3-270m layer 9 (quick preset) so ReLU and JumpReLU end near L0 = k = 64.
CALIBRATED_SPARSITY = SparsityHyperparams(
    l1_coefficient=3.0, l0_coefficient=0.5, jumprelu_init_threshold=1.0, jumprelu_ste_to_input=True
)

PRESETS: Registry[TrainPreset] = Registry("preset")
PRESETS.update(
    {
        # The paper's setting: 30k x 4096 = 123M tokens, more than the cache, so activations are streamed from the
        # model (each token seen once) from the Pile where the hub is reachable. Offline corpora are far smaller:
        # such a run stops unless --allow-repeats.
        "paper": TrainPreset(
            name="paper",
            expansion=16,
            lr=3e-4,
            betas=(0.9, 0.99),
            batch_size=4096,
            train_tokens=30_000 * 4096,
            cache_tokens=2_000_000,
            eval_tokens=65_536,
            heldout_tokens=200_000,
            sparsity=CALIBRATED_SPARSITY,
            checkpoint_every_steps=1000,
            preferred_corpus="pile",
        ),
        # CPU default: all six variants + core metrics within ~20 minutes on 2 cores with a warm cache.
        "quick": TrainPreset(
            name="quick",
            expansion=8,
            lr=1e-3,
            betas=(0.9, 0.99),
            batch_size=1024,
            train_tokens=262_144,
            cache_tokens=262_144,
            eval_tokens=4_096,
            heldout_tokens=49_152,
            sparsity=CALIBRATED_SPARSITY,
            dead_window_tokens=200_000,
            checkpoint_every_steps=64,
        ),
        # CPU results a reader can take seriously (issue 16): 2^20 unique training tokens per SAE (each seen once)
        # from the offline corpus large enough for that, a held-out set large enough that a latent firing once
        # in 10^4 tokens is seen alive, a longer spliced-loss sample. Width 4 x d_model (half quick's) so every
        # latent meets ~25k activations at k = 64 (dead fraction < 10%) and 24 SAEs train in ~40 min on 2 cores.
        "reference": TrainPreset(
            name="reference",
            expansion=4,
            lr=1e-3,
            betas=(0.9, 0.99),
            batch_size=1024,
            train_tokens=1_048_576,
            cache_tokens=1_048_576,
            eval_tokens=8_192,
            heldout_tokens=131_072,
            sparsity=CALIBRATED_SPARSITY,
            dead_window_tokens=262_144,
            checkpoint_every_steps=128,
            preferred_corpus="wiki-multi",
        ),
        # Seconds: for tests and smoke checks.
        "smoke": TrainPreset(
            name="smoke",
            expansion=2,
            lr=1e-3,
            betas=(0.9, 0.99),
            batch_size=64,
            train_tokens=2_048,
            cache_tokens=2_048,
            eval_tokens=256,
            heldout_tokens=1_024,
            sparsity=SparsityHyperparams(l1_coefficient=2.0, l0_coefficient=0.5),
            dead_window_tokens=1_024,
            checkpoint_every_steps=8,
            log_every_steps=2,
        ),
    }
)


def get_preset(name: str) -> TrainPreset:
    return PRESETS.lookup(name)
