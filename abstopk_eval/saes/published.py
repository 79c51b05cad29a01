"""Published SAEs: sae_lens releases (Gemma Scope, gpt2-small-res-jb, ...) selected by release and id, or by regex
over sae_lens's pretrained-SAE directory as SAEBench's `--sae_regex_pattern` / `--sae_block_pattern` do.

Loading is sae_lens's own: `SAE.from_pretrained_with_cfg_and_sparsity` (the release's converter, its config
overrides, its norm scaling folded), which downloads through huggingface_hub into the Hugging Face cache, or reads
that cache alone when the hub is offline (`HF_HUB_OFFLINE=1`) or unreachable. The SAE is then checked against the
model and layer like a checkpoint from disk (`formats.check_target`: a `blocks.{L+1}.hook_resid_pre` SAE reads
layer L) and converted the same way (threshold SAEs get unit-norm decoder rows). Its provenance records the
release, the id, the hub repo, folder and revision, and the release's `model_from_pretrained_kwargs`: this project
runs Hugging Face models without TransformerLens's weight processing, so an SAE trained on TransformerLens
activations with `center_writing_weights` sees inputs whose per-token mean over d_model it never saw (the
downstream LayerNorms ignore that mean, so the spliced metrics are unaffected; reconstruction errors include it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abstopk_eval.errors import UserError
from abstopk_eval.io import hub_offline, hub_reachable
from abstopk_eval.models.registry import ModelSpec
from abstopk_eval.saes.formats import (
    ACTIVATIONS,
    PUBLISHED_FORMAT,
    ExternalSAE,
    check_target,
    fold_decoder_norms,
    model_names,
    sae_lens_activation,
    sae_lens_declared,
)
from abstopk_eval.saes.signs import has_signed_latents

log = logging.getLogger("abstopk_eval.published")


@dataclass(frozen=True)
class PublishedRef:
    """One SAE of an sae_lens release."""

    release: str
    sae_id: str

    @property
    def label(self) -> str:
        return f"{self.release}/{self.sae_id}"

    def default_name(self) -> str:
        """`ext-<release>-<sae_id>`, filesystem-safe (the results folder's label)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.release}-{self.sae_id}").strip("-.")
        return f"ext-{safe}"


def directory() -> dict[str, Any]:
    """sae_lens's pretrained-SAE directory (release -> PretrainedSAELookup), read at each call so that a test
    can register a release in it."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def _close(name: str, names: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def resolve(releases: Sequence[str], sae_ids: Sequence[str]) -> list[PublishedRef]:
    """Pair `--release` with `--sae-id` values: one release with any number of ids, or as many releases as ids
    (in order). Unknown releases and ids are UserErrors."""
    if not releases and not sae_ids:
        return []
    if not releases or not sae_ids:
        raise UserError("--release and --sae-id go together (e.g. --release gpt2-small-res-jb --sae-id ID)")
    if len(releases) not in (1, len(sae_ids)):
        raise UserError(
            f"give one --release for all --sae-id values or one per --sae-id (got {len(releases)} releases and "
            f"{len(sae_ids)} ids)"
        )
    pairs = zip(releases * len(sae_ids) if len(releases) == 1 else releases, sae_ids)
    refs = [PublishedRef(release, sae_id) for release, sae_id in pairs]
    known = directory()
    for ref in refs:
        if ref.release not in known:
            raise UserError(
                f"unknown sae_lens release {ref.release!r} (not in sae_lens's pretrained-SAE directory)"
                f"{_close(ref.release, list(known))}"
            )
        ids = known[ref.release].saes_map
        if ref.sae_id not in ids:
            raise UserError(f"release {ref.release} has no SAE {ref.sae_id!r}{_close(ref.sae_id, list(ids))}")
    return refs


def select(release_patterns: Sequence[str], id_patterns: Sequence[str]) -> list[PublishedRef]:
    """SAEs whose release and id both fully match a (release pattern, id pattern) pair, in directory order: the
    rule of SAEBench's `get_saes_from_regex` / `select_saes_multiple_patterns`. UserError when a pattern is not a
    regular expression, the lists do not pair up, or a pair matches nothing."""
    if len(release_patterns) != len(id_patterns):
        raise UserError(
            "--sae-regex-pattern and --sae-block-pattern pair up: give each the same number of times "
            f"(got {len(release_patterns)} and {len(id_patterns)})"
        )
    found: dict[PublishedRef, None] = {}
    for release_pattern, id_pattern in zip(release_patterns, id_patterns):
        try:
            release_re, id_re = re.compile(release_pattern), re.compile(id_pattern)
        except re.error as err:
            raise UserError(f"bad regular expression ({err})") from None
        matched = [
            PublishedRef(release, sae_id)
            for release, lookup in directory().items()
            if release_re.fullmatch(release)
            for sae_id in lookup.saes_map
            if id_re.fullmatch(sae_id)
        ]
        if not matched:
            raise UserError(
                f"no SAE in sae_lens's pretrained-SAE directory has a release matching {release_pattern!r} and an "
                f"id matching {id_pattern!r}"
            )
        found.update(dict.fromkeys(matched))
    return list(found)


def check_release_model(ref: PublishedRef, spec: ModelSpec) -> None:
    """UserError, before any download, when the directory says the release is for another model."""
    model = directory()[ref.release].model
    if model and str(model).lower() not in model_names(spec):
        raise UserError(f"{ref.label}: the release is for model {model!r}, not {spec.key} ({spec.hf_id})")


@contextlib.contextmanager
def _hub_access() -> Iterator[bool]:
    """huggingface_hub offline while the hub is offline by flag or unreachable, so the cache answers at once
    (huggingface_hub reads HF_HUB_OFFLINE once, at import, and retries a dead network for about a minute);
    yields whether it is offline."""
    from huggingface_hub import constants

    offline = hub_offline() or constants.HF_HUB_OFFLINE or not hub_reachable()
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield offline
    finally:
        constants.HF_HUB_OFFLINE = before


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0][:160] if text else ''}"


def _hub_files(repo_id: str, folder: str) -> tuple[str | None, str | None]:
    """(revision, local folder) of the release folder in the Hugging Face cache, where it is there."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("cfg.json", "sae_weights.safetensors", "params.npz", "sae.safetensors", "config.json"):
        found = try_to_load_from_cache(repo_id, f"{folder}/{name}" if folder else name)
        if isinstance(found, str):
            parts = Path(found).parts
            revision = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
            return revision, str(Path(found).parent)
    return None, None


def state_sha256(sae: Any) -> str:
    """sha256 over the SAE's parameters and buffers (names, shapes, float32 bytes), in name order: what identifies
    a published SAE's weights whatever file format its release uses."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        value = tensor.detach().float().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def load_published(ref: PublishedRef, *, spec: ModelSpec, layer: int) -> ExternalSAE:
    """Load `ref` through `SAE.from_pretrained_with_cfg_and_sparsity`, check it against `spec` / `layer` and
    convert it as `formats.load_external` converts an sae_lens folder."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    check_release_model(ref, spec)
    repo_id, folder = get_repo_id_and_folder_name(ref.release, ref.sae_id)
    with _hub_access() as offline:
        log.info("loading %s through sae_lens (%s)", ref.label, "Hugging Face cache only" if offline else "hub")
        try:
            sae, cfg_dict, _ = SAE.from_pretrained_with_cfg_and_sparsity(
                ref.release, ref.sae_id, device="cpu", dtype="float32"
            )
        except Exception as err:  # hub, cache and conversion errors come in many types
            where = "is not in the local Hugging Face cache and the hub is offline" if offline else "failed to load"
            raise UserError(f"{ref.label} (hub repo {repo_id}, folder {folder}) {where} ({_one_line(err)})") from None
        revision, local = _hub_files(repo_id, folder)
    source = f"hf://{repo_id}/{folder}"
    metadata = sae.cfg.metadata.to_dict() if hasattr(sae.cfg.metadata, "to_dict") else dict(sae.cfg.metadata)
    if sae.cfg.normalize_activations != "none":
        raise UserError(
            f"{ref.label}: the SAE normalises its input ({sae.cfg.normalize_activations}) and sae_lens did not fold "
            "it into the weights; it cannot be evaluated on raw activations here"
        )
    declared = {k: v for k, v in sae_lens_declared(metadata).items() if v is not None}
    declared.setdefault("model", directory()[ref.release].model)
    note = check_target(ref.label, declared, sae.cfg.d_in, spec, layer)
    act_name = sae_lens_activation(sae.cfg.architecture(), metadata, ref.label)
    act = ACTIVATIONS[act_name]
    digest = state_sha256(sae)
    folded = fold_decoder_norms(sae, act)
    tl_kwargs = metadata.get("model_from_pretrained_kwargs") or cfg_dict.get("model_from_pretrained_kwargs")
    if tl_kwargs and tl_kwargs.get("center_writing_weights", True) is not False:
        log.warning(
            "%s was trained on TransformerLens activations with center_writing_weights; this model runs without "
            "it, so reconstructions are compared with uncentred activations",
            ref.label,
        )
    return ExternalSAE(
        sae=sae,
        source_path=source,
        format=PUBLISHED_FORMAT,
        weights_file=local or source,
        sha256=digest,
        activation=act_name,
        architecture=sae.cfg.architecture(),
        k=getattr(sae.cfg, "k", None) if act.uses_k else None,
        signed=has_signed_latents(sae),
        declared=declared,
        decoder_norms_folded=folded,
        hook_note=note,
        extra={
            "sae_lens_release": ref.release,
            "sae_lens_id": ref.sae_id,
            "hf_repo_id": repo_id,
            "hf_folder": folder,
            "hf_revision": revision,
            "model_from_pretrained_kwargs": tl_kwargs or None,
        },
    )
