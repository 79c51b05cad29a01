"""Load SAE checkpoints written by other tools and convert them to sae_lens SAEs of this project's registry.

Five on-disk formats are recognised (`detect_format`), and published sae_lens releases load through
`abstopk_eval.saes.published`:

- ``sae_lens``: a folder with ``cfg.json`` + ``sae_weights.safetensors`` (``SAE.save_model`` / ``load_from_disk``),
  architectures standard, jumprelu, topk, abstopk and batch_abstopk (the last registered by this package).
- ``sae_bench``: a torch file (``.pt`` / ``.pth``) holding the state dict of one of sae_bench's custom SAEs
  (``sae_bench.custom_saes``: ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc``, ``b_dec``, plus
  ``threshold`` for JumpReLU / BatchTopK and ``k`` for TopK / BatchTopK), either bare or as
  ``{"state_dict": ..., "cfg": CustomSAEConfig.to_dict()}``; a ``<stem>.json`` (or ``cfg.json``) next to it may
  hold that config instead. sae_bench saves no activation name with a bare state dict, so a state dict with
  ``k`` or ``threshold`` needs ``cfg.architecture`` (or ``--activation``): TopK and AbsTopK weights look alike.
- ``dictionary_learning`` (saprmarks/dictionary_learning): a folder with ``ae.pt`` and ``config.json``
  (``trainer.dict_class``, ``activation_dim``, ``dict_size``, ``k``, ``layer``, ``lm_name``). The state dict uses
  ``nn.Linear`` layouts: ``encoder.weight`` [d_sae, d_in], ``encoder.bias``, ``decoder.weight`` [d_in, d_sae] and
  ``b_dec`` (``bias`` in the plain ``AutoEncoder``), with ``k`` / ``threshold`` buffers for AutoEncoderTopK and
  BatchTopKSAE; JumpReluAutoEncoder stores ``W_enc`` / ``W_dec`` / ``b_enc`` / ``b_dec`` / ``threshold`` and does
  not subtract ``b_dec`` from its input.
- ``safetensors``: one ``.safetensors`` file with ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` (+ ``threshold``) whose
  metadata names the activation (``activation``: relu | jumprelu | topk | batchtopk | abstopk | batch_abstopk, and
  ``k``), or the ``--activation`` / ``--k`` flags. Optional metadata: ``model``, ``layer``, ``hook_name``,
  ``apply_b_dec_to_input`` ("true" by default: the encoder reads ``x - b_dec``).
- ``sparsify`` (EleutherAI/sparsify ``SparseCoder.save_to_disk``): a folder with ``cfg.json`` (``d_in``, ``k``,
  ``activation`` = topk, ``num_latents`` or ``expansion_factor``, ``transcode``, ``skip_connection``) and
  ``sae.safetensors`` (``encoder.weight`` [d_sae, d_in], ``encoder.bias``, ``W_dec`` [d_sae, d_in], ``b_dec``).
  Its encoder is ReLU(W (x - b_dec) + b) followed by the k largest, which is sae_lens's TopK exactly; transcoders,
  skip connections and the ``groupmax`` activation are refused. The folder's name is sparsify's hookpoint
  (``layers.6``: the output of decoder layer 6) and the run folder's ``config.json`` may name the model. (Read
  here after sparsify's own ``SparseCoder`` code rather than with sae_lens 6.54's ``sparsify_disk_loader``, which
  transposes ``W_dec`` and ties the ``b_dec`` subtraction to ``normalize_decoder``.)

Every checkpoint becomes an sae_lens SAE of the matching architecture: relu -> standard, jumprelu -> jumprelu,
topk -> topk, batchtopk -> jumprelu (its scalar inference threshold on ReLU(u), as sae_lens saves BatchTopK),
abstopk -> abstopk and batch_abstopk -> batch_abstopk; the last two keep signed latents. The activations are the
registered variants (`saes/variants.py`) under their names with underscores (`activation_name`), and their
architecture and signedness are the variants' declarations, not restated here. The conversion computes
the same function as the source. Threshold-based and ReLU SAEs whose decoder rows are not unit-norm have the
norms folded into the encoder (reconstructions unchanged; latents in the unit-decoder convention this project
uses); per-sample k-sparse SAEs are kept as they are, since folding would change which latents win.

A checkpoint that declares another model, layer or hook, whose d_in differs from the model's d_model, or whose
activation is unknown or ambiguous, is refused with a one-line `UserError`. A checkpoint reading
``blocks.{L+1}.hook_resid_pre`` is accepted as layer L: the residual stream entering block L+1 is the one leaving
block L (``blocks.L.hook_resid_post``), so it is the same activation; the result's provenance says so
(`hook_note`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY

from abstopk_eval.errors import UserError
from abstopk_eval.io import sha256_file
from abstopk_eval.models.registry import ModelSpec
from abstopk_eval.saes import batch_abstopk as _registers  # noqa: F401  (registers `batch_abstopk` in sae_lens)
from abstopk_eval.saes.signs import has_signed_latents
from abstopk_eval.saes.variants import VARIANTS, InferenceRule, VariantSpec

FORMATS = ("sae_lens", "sae_bench", "dictionary_learning", "safetensors", "sparsify")
"""The on-disk formats `detect_format` recognises (`--help` of compare lists them)."""
PUBLISHED_FORMAT = "sae_lens_release"
"""The `source_format` of SAEs loaded by release and id through `SAE.from_pretrained` (`saes.published`)."""
SPARSIFY_WEIGHTS = "sae.safetensors"


def activation_name(variant: str) -> str:
    """The name other tools give a variant's activation: hyphens become underscores (batch-abstopk -> batch_abstopk)."""
    return variant.replace("-", "_")


@dataclass(frozen=True)
class Activation:
    """An activation name of the external formats and the registered variant it denotes."""

    name: str
    variant: VariantSpec

    @property
    def architecture(self) -> str:
        """sae_lens architecture of the converted checkpoint."""
        return self.variant.architecture

    @property
    def uses_k(self) -> bool:
        """Per-sample k-sparse (k is part of the inference function)."""
        return self.variant.inference is InferenceRule.PER_SAMPLE_TOPK

    @property
    def signed(self) -> bool:
        return self.variant.signed


class _Activations(Mapping[str, Activation]):
    """The registered variants by activation name, read from the registry on each use (so always current)."""

    def _table(self) -> dict[str, Activation]:
        return {activation_name(name): Activation(activation_name(name), spec) for name, spec in VARIANTS.items()}

    def __getitem__(self, name: str) -> Activation:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(VARIANTS)


ACTIVATIONS: Mapping[str, Activation] = _Activations()
# other spellings (after hyphens become underscores)
_ALIASES = {
    "standard": "relu",
    "relu_sae": "relu",
    "jump_relu": "jumprelu",
    "top_k": "topk",
    "batch_topk": "batchtopk",
    "abs_topk": "abstopk",
    "absolutek": "abstopk",
    "batchabstopk": "batch_abstopk",
    "batch_abs_topk": "batch_abstopk",
    "batchabsolutek": "batch_abstopk",
    "matryoshka_batch_topk": "batchtopk",
    "matryoshka_batchtopk": "batchtopk",
}
# dictionary_learning dictionary classes -> activation; names with "abs" are the signed (AbsTopK) family
_DICT_CLASSES = {
    "AutoEncoder": "relu",
    "AutoEncoderNew": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "batchtopk",
    "JumpReluAutoEncoder": "jumprelu",
}
# names other tools use for our models (checked besides the registry key and the hub id)
_MODEL_ALIASES = {"gpt2": ("gpt2-small",)}
_GENERIC_STEMS = {"ae", "sae", "sae_weights", "model", "params", "weights", "state_dict", "checkpoint"}


def _known_activation(name: str) -> str | None:
    key = activation_name(str(name).strip().lower())
    key = _ALIASES.get(key, key)
    return key if key in ACTIVATIONS else None


def canonical_activation(name: str) -> str:
    """The activation's canonical name, or a UserError listing the known ones."""
    key = _known_activation(name)
    if key is None:
        raise UserError(f"unknown SAE activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return key


def _activation_of_architecture() -> dict[str, str]:
    """The activation an sae_lens checkpoint of each architecture is read as.

    Where several variants export one architecture (jumprelu and batchtopk both save as `jumprelu`), the
    one whose checkpoint applies its own training rule wins; `_read_sae_lens` then consults the
    checkpoint's training architecture.
    """
    out: dict[str, str] = {}
    for act in sorted(ACTIVATIONS.values(), key=lambda a: a.variant.inference is InferenceRule.RUNNING_THRESHOLD):
        out.setdefault(act.architecture, act.name)
    return out


@dataclass
class RawSAE:
    """Weights in sae_lens orientation plus what the source format declares about them."""

    W_enc: torch.Tensor
    """[d_in, d_sae]"""
    W_dec: torch.Tensor
    """[d_sae, d_in]"""
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    activation: str | None
    k: int | None = None
    threshold: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    declared: dict[str, Any] = field(default_factory=dict)
    """model / layer / hook_name as the checkpoint states them (None where it does not)."""


@dataclass
class ExternalSAE:
    """A converted checkpoint and where it came from."""

    sae: SAE
    source_path: Path | str
    """The checkpoint's path, or for published SAEs the hub address hf://<repo>/<folder>."""
    format: str
    weights_file: Path | str
    sha256: str
    activation: str
    architecture: str
    k: int | None
    signed: bool
    declared: dict[str, Any]
    decoder_norms_folded: bool = False
    hook_note: str | None = None
    """Set when the checkpoint reads another hook holding the same activation (see `check_target`)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What else the source states (published SAEs: sae_lens release and id, hub repo, folder and revision)."""

    @property
    def provenance(self) -> dict[str, Any]:
        optional = {"hook_note": self.hook_note} if self.hook_note else {}
        return {
            "source_path": str(self.source_path),
            "source_format": self.format,
            "source_weights_file": str(self.weights_file),
            "source_sha256": self.sha256,
            "activation": self.activation,
            "architecture": self.architecture,
            "k": self.k,
            "signed_latents": self.signed,
            "declared": self.declared,
            "decoder_norms_folded": self.decoder_norms_folded,
            **optional,
            **self.extra,
        }


# --------------------------------------------------------------------------------------------- detection


def _is_dictionary_learning_config(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()).get("trainer"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def detect_format(path: str | Path) -> tuple[str, Path]:
    """(format, weights file) of the checkpoint at `path` (a folder or a file); UserError when unrecognised."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no SAE checkpoint at {path}")
    if path.is_dir():
        if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
            return "sae_lens", path / "sae_weights.safetensors"
        if (path / "ae.pt").is_file():
            return "dictionary_learning", path / "ae.pt"
        if (path / "cfg.json").is_file() and (path / SPARSIFY_WEIGHTS).is_file():
            return "sparsify", path / SPARSIFY_WEIGHTS
        tensors = sorted(path.glob("*.safetensors"))
        torch_files = sorted([*path.glob("*.pt"), *path.glob("*.pth")])
        if len(tensors) == 1 and not torch_files:
            return "safetensors", tensors[0]
        if len(torch_files) == 1 and not tensors:
            return "sae_bench", torch_files[0]
        raise UserError(
            f"cannot tell the SAE format of folder {path}: expected cfg.json + sae_weights.safetensors "
            "(sae_lens), cfg.json + sae.safetensors (sparsify), ae.pt + config.json (dictionary_learning), or one "
            ".pt / .safetensors file"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if path.name == "sae_weights.safetensors" and (path.parent / "cfg.json").is_file():
            return "sae_lens", path
        if path.name == SPARSIFY_WEIGHTS and (path.parent / "cfg.json").is_file():
            return "sparsify", path
        return "safetensors", path
    if suffix in (".pt", ".pth"):
        if path.name == "ae.pt" or _is_dictionary_learning_config(path.parent / "config.json"):
            return "dictionary_learning", path
        return "sae_bench", path
    raise UserError(f"cannot tell the SAE format of {path}: expected a folder, a .safetensors or a .pt/.pth file")


# --------------------------------------------------------------------------------------------- readers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of several types
        raise UserError(
            f"{path} is not a readable torch checkpoint ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else ''})"
        ) from None


def _tensor(sd: dict[str, Any], *names: str, path: Path) -> torch.Tensor:
    for name in names:
        if name in sd:
            return torch.as_tensor(sd[name]).detach().float().cpu()
    raise UserError(f"{path} lacks {' / '.join(names)} (keys: {', '.join(sorted(map(str, sd))[:12])})")


def _optional(sd: dict[str, Any], name: str) -> torch.Tensor | None:
    return torch.as_tensor(sd[name]).detach().float().cpu() if name in sd else None


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"k must be an integer, got {value!r}") from None


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def sae_lens_activation(arch: str, metadata: Mapping[str, Any], where: str) -> str:
    """The activation an sae_lens SAE of architecture `arch` (with checkpoint metadata `metadata`) is read as."""
    by_architecture = _activation_of_architecture()
    if arch not in by_architecture:
        raise UserError(
            f"{where}: sae_lens architecture {arch!r} is not supported here; supported: {', '.join(by_architecture)}"
        )
    activation = by_architecture[arch]
    trained_as = _known_activation(metadata.get("training_architecture") or "")
    if trained_as is not None and ACTIVATIONS[trained_as].architecture == arch:
        activation = trained_as  # e.g. sae_lens saves a trained BatchTopK SAE as a JumpReLU with its threshold
    return activation


def sae_lens_declared(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Model, layer and hook as an sae_lens config's metadata states them."""
    return {
        "model": metadata.get("model") or metadata.get("model_name"),
        "layer": metadata.get("layer", metadata.get("hook_layer")),
        "hook_name": metadata.get("hook_name"),
    }


def _read_sae_lens(path: Path) -> tuple[SAE, dict[str, Any], str]:
    from abstopk_eval.saes.io import load_sae

    folder = path if path.is_dir() else path.parent
    cfg = _read_json(folder / "cfg.json")
    meta = cfg.get("metadata") or {}
    activation = sae_lens_activation(cfg.get("architecture", "standard"), meta, str(folder))
    return load_sae(folder), sae_lens_declared(meta), activation


def _read_sae_bench(path: Path) -> RawSAE:
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict")
    cfg: dict[str, Any] = {}
    if "state_dict" in obj:
        sd = obj["state_dict"]
        cfg = dict(obj.get("cfg") or obj.get("config") or {})
    else:
        sd = obj
    if not cfg:
        for side in (path.with_suffix(".json"), path.parent / "cfg.json"):
            if side.is_file():
                cfg = _read_json(side)
                break
    arch = cfg.get("architecture") or cfg.get("activation_fn_str") or None
    has_k, has_threshold = "k" in sd, "threshold" in sd
    if arch:
        activation = canonical_activation(arch)
    elif not has_k and not has_threshold:
        activation = "relu"  # sae_bench's ReluSAE: the only custom SAE with neither k nor threshold
    else:
        activation = None  # TopK vs AbsTopK, JumpReLU vs batch-level: the weights alone cannot tell
    default_apply = activation != "jumprelu"  # sae_bench's JumpReluSAE encodes x @ W_enc (no b_dec subtraction)
    hook_name = cfg.get("hook_name")
    return RawSAE(
        W_enc=_tensor(sd, "W_enc", path=path),
        W_dec=_tensor(sd, "W_dec", path=path),
        b_enc=_tensor(sd, "b_enc", path=path),
        b_dec=_tensor(sd, "b_dec", path=path),
        activation=activation,
        k=_int_or_none(sd.get("k", cfg.get("k"))),
        threshold=_optional(sd, "threshold"),
        apply_b_dec_to_input=_bool(cfg.get("apply_b_dec_to_input"), default_apply),
        declared={"model": cfg.get("model_name"), "layer": cfg.get("hook_layer"), "hook_name": hook_name},
    )


def _dict_class_activation(dict_class: str) -> str | None:
    if dict_class in _DICT_CLASSES:
        return _DICT_CLASSES[dict_class]
    lowered = dict_class.lower()
    if "abs" in lowered:  # e.g. AbsTopKSAE, BatchAbsoluteKSAE: signed latents
        return "batch_abstopk" if "batch" in lowered else "abstopk"
    return None


def _read_dictionary_learning(path: Path) -> RawSAE:
    folder = path if path.is_dir() else path.parent
    weights = folder / "ae.pt" if path.is_dir() else path
    config = folder / "config.json"
    trainer = _read_json(config).get("trainer", {}) if config.is_file() else {}
    if not isinstance(trainer, dict):
        raise UserError(f"{config}: `trainer` is not an object")
    sd = _torch_load(weights)
    if not isinstance(sd, dict):
        raise UserError(f"{weights} does not hold a state dict")
    dict_class = str(trainer.get("dict_class") or "")
    activation = trainer.get("activation")
    if activation:
        activation = canonical_activation(activation)
    elif dict_class:
        activation = _dict_class_activation(dict_class)
        if activation is None:
            raise UserError(
                f"{config}: dictionary class {dict_class!r} has no supported activation "
                f"(supported: {', '.join(_DICT_CLASSES)}, or an AbsTopK class)"
            )
    if "encoder.weight" in sd:  # nn.Linear layouts
        W_enc = _tensor(sd, "encoder.weight", path=weights).T.contiguous()
        W_dec = _tensor(sd, "decoder.weight", path=weights).T.contiguous()
        b_enc = _tensor(sd, "encoder.bias", path=weights)
        if "decoder.bias" in sd and "b_dec" not in sd and "bias" not in sd:  # AutoEncoderNew: x_hat = decoder(f)
            b_dec, default_apply = _tensor(sd, "decoder.bias", path=weights), False
        else:
            b_dec, default_apply = _tensor(sd, "b_dec", "bias", path=weights), True
    else:  # JumpReluAutoEncoder / Matryoshka: sae_lens-like names
        W_enc, W_dec = _tensor(sd, "W_enc", path=weights), _tensor(sd, "W_dec", path=weights)
        b_enc, b_dec = _tensor(sd, "b_enc", path=weights), _tensor(sd, "b_dec", path=weights)
        default_apply = activation != "jumprelu"
    submodule = trainer.get("submodule_name")
    return RawSAE(
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=b_enc,
        b_dec=b_dec,
        activation=activation,
        k=_int_or_none(sd.get("k", trainer.get("k"))),
        threshold=_optional(sd, "threshold"),
        apply_b_dec_to_input=_bool(trainer.get("apply_b_dec_to_input"), default_apply),
        declared={
            "model": trainer.get("lm_name"),
            "layer": trainer.get("layer"),
            "hook_name": submodule,
            "d_in": trainer.get("activation_dim"),
            "d_sae": trainer.get("dict_size"),
        },
    )


def _read_safetensors(path: Path) -> RawSAE:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            sd = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as err:
        raise UserError(f"{path} is not a readable safetensors file ({err.__class__.__name__})") from None
    activation = meta.get("activation") or meta.get("architecture")
    return RawSAE(
        W_enc=_tensor(sd, "W_enc", path=path),
        W_dec=_tensor(sd, "W_dec", path=path),
        b_enc=_tensor(sd, "b_enc", path=path),
        b_dec=_tensor(sd, "b_dec", path=path),
        activation=canonical_activation(activation) if activation else None,
        k=_int_or_none(meta.get("k")),
        threshold=_optional(sd, "threshold"),
        apply_b_dec_to_input=_bool(meta.get("apply_b_dec_to_input"), True),
        declared={
            "model": meta.get("model") or meta.get("model_name"),
            "layer": meta.get("layer"),
            "hook_name": meta.get("hook_name"),
        },
    )


_SPARSIFY_HOOKPOINT = re.compile(r"(?:^|\.)(?:layers|h)\.\d+(?:\.|$)|^embed")


def _read_sparsify(path: Path) -> RawSAE:
    folder = path if path.is_dir() else path.parent
    cfg = _read_json(folder / "cfg.json")
    for flag, what in (
        ("transcode", "a transcoder"),
        ("skip_connection", "an SAE with a skip connection"),
        ("embed_skip", "an SAE with an embedding skip connection"),
        ("gram_lookup", "an SAE with an n-gram lookup"),
        ("signed", "a signed sparsify coder"),
    ):
        if cfg.get(flag):
            raise UserError(f"{folder}: {what} ({flag}=true) is not supported; only plain sparsify SAEs are")
    activation = str(cfg.get("activation", "topk"))
    if activation != "topk":
        raise UserError(f"{folder}: sparsify activation {activation!r} is not supported (only topk)")
    from safetensors import safe_open

    weights = folder / SPARSIFY_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as handle:
            sd = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as err:
        raise UserError(f"{weights} is not a readable safetensors file ({err.__class__.__name__})") from None
    if "W_skip" in sd:
        raise UserError(f"{folder}: an SAE with a skip connection (W_skip) is not supported")
    W_enc = _tensor(sd, "encoder.weight", path=weights).T.contiguous()
    d_in, d_sae = W_enc.shape
    W_dec = _tensor(sd, "W_dec", path=weights)
    if W_dec.shape == (d_in, d_sae) and d_in != d_sae:  # an nn.Linear-style decoder
        W_dec = W_dec.T.contiguous()
    stated_d_sae = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor") or 0) or None
    run_config = folder.parent / "config.json"
    model = _read_json(run_config).get("model") if run_config.is_file() else None
    return RawSAE(
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=_tensor(sd, "encoder.bias", path=weights),
        b_dec=_tensor(sd, "b_dec", path=weights),
        activation="topk",
        k=_int_or_none(cfg.get("k")),
        apply_b_dec_to_input=True,  # SparseCoder.encode reads x - b_dec (all but transcoders)
        declared={
            "model": model,
            "hook_name": folder.name if _SPARSIFY_HOOKPOINT.search(folder.name) else None,
            "d_in": cfg.get("d_in"),
            "d_sae": stated_d_sae,
        },
    )


# --------------------------------------------------------------------------------------------- checks


def model_names(spec: ModelSpec) -> set[str]:
    names = {spec.key, spec.hf_id, spec.hf_id.split("/")[-1], *_MODEL_ALIASES.get(spec.key, ())}
    return {n.lower() for n in names}


_RESID_PRE = re.compile(r"blocks\.(\d+)\.hook_resid_pre")


def _declared_layer(declared: dict[str, Any]) -> int | None:
    layer = declared.get("layer")
    if layer is not None and layer != "":
        try:
            return int(layer)
        except (TypeError, ValueError):
            raise UserError(f"declared layer {layer!r} is not an integer") from None
    hook = str(declared.get("hook_name") or "")
    found = re.search(r"blocks\.(\d+)(?:\.|$)|layer[_.]?(\d+)|layers\.(\d+)|\.h\.(\d+)", hook)
    return int(next(g for g in found.groups() if g is not None)) if found else None


def resid_pre_note(hook: str) -> tuple[int, str] | None:
    """(layer, note) for a hook `blocks.{L+1}.hook_resid_pre`: the residual stream entering block L+1 is the one
    leaving block L, so such an SAE reads layer L (`blocks.L.hook_resid_post`); None for any other hook."""
    found = _RESID_PRE.fullmatch(hook.strip())
    if found is None or int(found.group(1)) == 0:
        return None
    block = int(found.group(1))
    return block - 1, (
        f"the checkpoint reads {hook}, the residual stream entering block {block}, which is the same activation as "
        f"blocks.{block - 1}.hook_resid_post (leaving block {block - 1}); evaluated as layer {block - 1}"
    )


def check_target(path: Path | str, declared: dict[str, Any], d_in: int, spec: ModelSpec, layer: int) -> str | None:
    """Refuse a checkpoint for another model, layer, hook or width (one-line UserErrors); returns the hook note of
    a checkpoint accepted through `resid_pre_note`, else None."""
    if d_in != spec.d_model:
        raise UserError(f"{path}: checkpoint has d_in={d_in} but {spec.key} has d_model={spec.d_model}")
    model = declared.get("model")
    if model and str(model).lower() not in model_names(spec):
        raise UserError(f"{path}: checkpoint is for model {model!r}, not {spec.key} ({spec.hf_id})")
    hook = str(declared.get("hook_name") or "")
    pre = resid_pre_note(hook) if hook else None
    if pre is not None:
        pre_layer, note = pre
        stated = declared.get("layer")
        # sae_lens / sae_bench state the hook's block (L+1) as hook_layer; L itself is consistent too
        if stated not in (None, "") and _declared_layer({"layer": stated}) not in (pre_layer, pre_layer + 1):
            raise UserError(f"{path}: checkpoint declares layer {stated} but reads {hook}")
        if pre_layer != layer:
            raise UserError(f"{path}: checkpoint is for layer {pre_layer} ({hook}), not --layer {layer}")
        return note
    if hook and re.search(r"mlp|attn|attention|hook_z|resid_pre|resid_mid|ln\d|norm|embed", hook, re.IGNORECASE):
        raise UserError(
            f"{path}: checkpoint reads {hook!r}, not the residual stream after a block (blocks.L.hook_resid_post, "
            "or blocks.{L+1}.hook_resid_pre)"
        )
    declared_layer = _declared_layer(declared)
    if declared_layer is not None and declared_layer != layer:
        raise UserError(f"{path}: checkpoint is for layer {declared_layer}, not --layer {layer}")
    return None


# --------------------------------------------------------------------------------------------- conversion


def _unit_rows(W_dec: torch.Tensor) -> bool:
    norms = W_dec.norm(dim=-1)
    return bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-5))


def raw_to_sae(raw: RawSAE, path: Path) -> tuple[SAE, bool]:
    """The sae_lens SAE computing the same function as `raw`; also whether decoder norms were folded."""
    if raw.activation is None:
        raise UserError(
            f"{path}: the checkpoint does not name its activation (TopK and AbsTopK weights look "
            f"alike); pass --activation ({', '.join(ACTIVATIONS)})"
        )
    act = ACTIVATIONS[raw.activation]
    d_in, d_sae = raw.W_enc.shape
    if raw.W_dec.shape != (d_sae, d_in) or raw.b_enc.shape != (d_sae,) or raw.b_dec.shape != (d_in,):
        raise UserError(
            f"{path}: inconsistent shapes W_enc {tuple(raw.W_enc.shape)}, W_dec {tuple(raw.W_dec.shape)}, "
            f"b_enc {tuple(raw.b_enc.shape)}, b_dec {tuple(raw.b_dec.shape)}"
        )
    sae_cls, cfg_cls = SAE_CLASS_REGISTRY[act.architecture]
    kwargs: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": raw.apply_b_dec_to_input}
    state = {"W_enc": raw.W_enc, "W_dec": raw.W_dec, "b_enc": raw.b_enc, "b_dec": raw.b_dec}
    if act.uses_k:
        if raw.k is None or not 0 < raw.k <= d_sae:
            raise UserError(f"{path}: a {act.name} SAE needs k in 1..{d_sae} (got {raw.k}); pass --k")
        kwargs |= {"k": raw.k, "rescale_acts_by_decoder_norm": False}
    sae = sae_cls(cfg_cls(**kwargs))
    if hasattr(sae, "threshold"):  # the architecture's inference rule has a threshold parameter
        if raw.threshold is None:
            raise UserError(f"{path}: a {act.name} SAE needs an inference threshold, and the checkpoint has none")
        threshold = raw.threshold.reshape(-1)
        if threshold.numel() == 1:
            threshold = threshold.expand(d_sae).clone()
        if threshold.numel() != d_sae:
            raise UserError(f"{path}: threshold has {threshold.numel()} values, expected 1 or d_sae={d_sae}")
        if act.variant.inference is InferenceRule.RUNNING_THRESHOLD and bool((threshold < 0).any()):
            raise UserError(
                f"{path}: the {act.name} inference threshold was never set (negative); the checkpoint "
                "cannot be evaluated without batch-level selection"
            )
        state["threshold"] = threshold
    try:
        sae.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"{path}: weights do not fit a {act.architecture} SAE ({str(err).splitlines()[0][:120]})"
        ) from None
    return sae, fold_decoder_norms(sae, act)


def fold_decoder_norms(sae: SAE, act: Activation) -> bool:
    """Give a ReLU / threshold SAE unit-norm decoder rows (function-preserving: encoder and thresholds scale
    instead); per-sample k-sparse SAEs are left as they are, since folding would change which latents win.
    Returns whether anything was folded."""
    if act.uses_k or _unit_rows(sae.W_dec.data):
        return False
    with torch.no_grad():
        sae.fold_W_dec_norm()
    return True


def load_external(
    path: str | Path, *, spec: ModelSpec, layer: int, activation: str | None = None, k: int | None = None
) -> ExternalSAE:
    """Read, check and convert the checkpoint at `path` for `spec` at `layer`.

    `activation` / `k` fill in what the checkpoint does not state; a conflict with what it states is an error.
    """
    path = Path(path).expanduser().resolve()
    fmt, weights = detect_format(path)
    flag_activation = canonical_activation(activation) if activation else None
    if fmt == "sae_lens":
        sae, declared, act_name = _read_sae_lens(path)
        arch = sae.cfg.architecture()
        sae_k = getattr(sae.cfg, "k", None)
        if flag_activation and flag_activation != act_name and ACTIVATIONS[flag_activation].architecture != arch:
            raise UserError(f"{path}: --activation {flag_activation} contradicts the checkpoint's architecture {arch}")
        if k is not None and sae_k is not None and k != sae_k:
            raise UserError(f"{path}: --k {k} contradicts the checkpoint's k={sae_k}")
        note = check_target(path, declared, sae.cfg.d_in, spec, layer)
        folded = False
    else:
        reader = {
            "sae_bench": _read_sae_bench,
            "dictionary_learning": _read_dictionary_learning,
            "safetensors": _read_safetensors,
            "sparsify": _read_sparsify,
        }[fmt]
        raw = reader(path)
        if flag_activation:
            if raw.activation and raw.activation != flag_activation:
                raise UserError(f"{path}: --activation {flag_activation} contradicts the checkpoint's {raw.activation}")
            raw.activation = flag_activation
        if k is not None:
            if raw.k is not None and raw.k != k:
                raise UserError(f"{path}: --k {k} contradicts the checkpoint's k={raw.k}")
            raw.k = k
        for key in ("d_in", "d_sae"):
            stated = raw.declared.pop(key, None)
            actual = raw.W_enc.shape[0 if key == "d_in" else 1]
            if stated is not None and int(stated) != actual:
                raise UserError(f"{path}: config says {key}={stated} but the weights have {actual}")
        note = check_target(path, raw.declared, int(raw.W_enc.shape[0]), spec, layer)
        sae, folded = raw_to_sae(raw, path)
        act_name, declared = raw.activation, raw.declared
    act = ACTIVATIONS[act_name]
    return ExternalSAE(
        sae=sae,
        source_path=path,
        format=fmt,
        weights_file=weights,
        sha256=sha256_file(weights),
        activation=act_name,
        architecture=sae.cfg.architecture(),
        k=getattr(sae.cfg, "k", None) if act.uses_k else None,
        signed=has_signed_latents(sae),
        declared={k_: v for k_, v in declared.items() if v is not None},
        decoder_norms_folded=folded,
        hook_note=note,
    )


def default_name(path: str | Path) -> str:
    """`ext-<folder or file stem>` (the parent folder for generic names such as ae.pt), filesystem-safe."""
    path = Path(path).expanduser().resolve()
    stem = path.name if path.is_dir() else path.stem
    if stem.lower() in _GENERIC_STEMS:  # e.g. runs/.../topk_k64_s0/sae or .../trainer_3/ae.pt
        stem = path.parent.name
    elif re.fullmatch(r"(?:layers|h)\.\d+", stem):  # a sparsify hookpoint folder: <run>-layers.6
        stem = f"{path.parent.name}-{stem}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "sae"
    return f"ext-{safe}"
