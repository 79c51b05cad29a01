"""Results layout, atomic schema-checked writing, and the one reader every consumer iterates.

Layout of a results directory:

- ``<model>/layer_<L>/<sae_id>/<eval>.json``: one evaluation of one SAE;
- ``<model>/layer_<L>/baselines/<eval>/<method>.json``: a reference an evaluation scores without any SAE
  (steering's unsteered model ``original`` and Difference-in-Means ``dim``), so ``baselines`` is never an SAE id.

`iter_results` yields both as typed `ResultRecord`s, each with its `ResultKind`; reports, the paper tables,
the steering table and the runner's "already evaluated?" check all read through it.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from abstopk_eval.errors import UserError
from abstopk_eval.identity import IDENTITY_JSON
from abstopk_eval.io import atomic_write_json

log = logging.getLogger("abstopk_eval.results")

CONFIG_TAG_SEP = "@"
"""Separates an evaluation's name from the tag of a non-default config in a result's file name."""
BASELINES_DIR = "baselines"
"""The folder of a layer that holds baselines; reserved, so no SAE id may take it."""


def layer_dir(results_dir: Path, model: str, layer: int) -> Path:
    return Path(results_dir) / model / f"layer_{layer}"


def result_path(
    results_dir: Path, model: str, layer: int, sae_id: str, eval_name: str, config_tag: str | None = None
) -> Path:
    """results/<model>/layer_<L>/<sae_id>/<eval>.json, or <eval>@<config_tag>.json for a result computed with
    options other than the evaluation's defaults (so it never replaces, or is taken for, the default result)."""
    if sae_id == BASELINES_DIR:
        raise UserError(f"{BASELINES_DIR!r} is reserved for a layer's baselines and cannot be an SAE id")
    stem = eval_name if config_tag is None else f"{eval_name}{CONFIG_TAG_SEP}{config_tag}"
    return layer_dir(results_dir, model, layer) / sae_id / f"{stem}.json"


def baseline_path(results_dir: Path, model: str, layer: int, eval_name: str, method: str) -> Path:
    """results/<model>/layer_<L>/baselines/<eval>/<method>.json"""
    return layer_dir(results_dir, model, layer) / BASELINES_DIR / eval_name / f"{method}.json"


def write_eval_output(path: Path, output: Any, identity: Mapping[str, Any] | None = None) -> None:
    """Validate (pydantic dataclass) and write atomically, with the result's identity record when given."""
    data = asdict(output)
    if identity is not None:
        data["identity"] = dict(identity)
    atomic_write_json(Path(path), data)


def read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"result file {path} is unreadable ({err.__class__.__name__}); delete it and rerun") from None


# ---------------------------------------------------------------------------------------------- reading


class ResultKind(enum.Enum):
    SAE = "sae"
    """An evaluation of one SAE: `ResultRecord.name` is the SAE id."""
    BASELINE = "baseline"
    """A reference scored without an SAE: `ResultRecord.name` is the method (e.g. steering's ``dim``)."""


@dataclass(frozen=True)
class ResultRecord:
    """One readable result file and where it sits in the layout."""

    model: str
    layer: int
    kind: ResultKind
    name: str
    """The SAE id (kind SAE) or the baseline's method (kind BASELINE)."""
    eval_name: str
    path: Path
    data: dict[str, Any]
    config_tag: str | None = None
    """None for the evaluation's default config, else the short hash of the config it ran with."""

    @property
    def provenance(self) -> dict[str, Any]:
        return self.data.get("provenance") or {}

    @property
    def identity(self) -> dict[str, Any]:
        """The result's identity record (see `abstopk_eval.identity.ResultIdentity`); empty for old results."""
        return self.data.get("identity") or {}

    @property
    def marked_stale(self) -> bool:
        """Written under an older version's evaluation config and marked so (`stale_config`, by `migrate` or when a
        default changed): never current, never averaged with current results."""
        return bool(self.identity.get("stale_config"))

    @property
    def preset(self) -> str:
        """The training preset of the SAE (or baseline run) it scored; each preset gets its own report tables."""
        return str(self.provenance.get("preset") or DEFAULT_PRESET_NAME)

    @property
    def table(self) -> TableKey:
        """The report table this result belongs to."""
        return TableKey(self.model, self.layer, self.preset)


DEFAULT_PRESET_NAME = "quick"
"""The preset of results that do not name one (and of `run` without --preset): its tables keep the bare name."""


@dataclass(frozen=True, order=True)
class TableKey:
    """One report table: a (model, layer, preset); SAEs trained under other presets are never in one table."""

    model: str
    layer: int
    preset: str

    @property
    def stem(self) -> str:
        """File-name stem of its report files: `<model>_layer<L>[_<preset>]`."""
        return f"{self.model}_layer{self.layer}" + ("" if self.preset == DEFAULT_PRESET_NAME else f"_{self.preset}")

    @property
    def title(self) -> str:
        return f"{self.model}, layer {self.layer}" + (
            "" if self.preset == DEFAULT_PRESET_NAME else f", preset {self.preset}"
        )


def table_groups(records: Iterator[ResultRecord] | list[ResultRecord]) -> dict[TableKey, list[ResultRecord]]:
    """Results by report table, in table order."""
    groups: dict[TableKey, list[ResultRecord]] = {}
    for r in records:
        groups.setdefault(r.table, []).append(r)
    return dict(sorted(groups.items()))


def _layer_of(folder: Path) -> int | None:
    suffix = folder.name.removeprefix("layer_")
    return int(suffix) if suffix.isdigit() else None


def _candidates(results_dir: Path, model: str | None, layer: int | None) -> Iterator[tuple[Path, ResultKind]]:
    layers = f"{model or '*'}/{'layer_*' if layer is None else f'layer_{layer}'}"
    for path in results_dir.glob(f"{layers}/*/*.json"):
        if path.parent.name != BASELINES_DIR:
            yield path, ResultKind.SAE
    for path in results_dir.glob(f"{layers}/{BASELINES_DIR}/*/*.json"):
        yield path, ResultKind.BASELINE


@dataclass(frozen=True)
class ResultFile:
    """Where a candidate result file sits in the layout (its content not read yet)."""

    model: str
    layer: int
    kind: ResultKind
    name: str
    eval_name: str
    path: Path
    config_tag: str | None = None


def result_files(results_dir: Path, *, model: str | None = None, layer: int | None = None) -> Iterator[ResultFile]:
    """Every file in `results_dir` that the layout says is a result (SAE results and baselines), in path order."""
    for path, found_kind in sorted(_candidates(Path(results_dir), model, layer), key=lambda found: found[0]):
        tag = None
        if found_kind is ResultKind.SAE:
            if path.name == IDENTITY_JSON:
                continue  # the folder's identity, not a result
            name, evaluation, folder = path.parent.name, path.stem, path.parent.parent
            evaluation, sep, tag_text = evaluation.partition(CONFIG_TAG_SEP)
            tag = tag_text if sep else None
        else:
            name, evaluation, folder = path.stem, path.parent.name, path.parent.parent.parent
        layer_number = _layer_of(folder)
        if layer_number is None:
            continue  # not a layer_<L> folder: not part of the layout
        yield ResultFile(folder.parent.name, layer_number, found_kind, name, evaluation, path, tag)


def iter_results(
    results_dir: Path,
    *,
    kind: ResultKind | None = None,
    eval_name: str | None = None,
    model: str | None = None,
    layer: int | None = None,
) -> Iterator[ResultRecord]:
    """Every readable result under `results_dir` in path order, optionally only of one kind, evaluation, model or
    layer. An unreadable file is skipped with one warning (a half-written or hand-edited result must not stop a
    report; `python -m abstopk_eval.verify` lists it)."""
    for f in result_files(results_dir, model=model, layer=layer):
        if (kind is not None and f.kind is not kind) or (eval_name is not None and f.eval_name != eval_name):
            continue
        try:
            data = json.loads(f.path.read_text())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):
            log.warning("skipping unreadable result %s", f.path)
            continue
        yield ResultRecord(f.model, f.layer, f.kind, f.name, f.eval_name, f.path, data, f.config_tag)


def current_results(
    results_dir: Path, model: str, layer: int, expected: Mapping[tuple[str, str, str | None], tuple[str, str | None]]
) -> set[tuple[str, str, str | None]]:
    """The (SAE id, evaluation, config tag) keys of `expected` whose result is current: its stored identity hash is
    the expected one and it scored the checkpoint with the expected weights digest. A retrained SAE, another
    corpus, preset, option set or code version with other defaults is therefore evaluated again; an SAE whose
    digest is None (no checkpoint) has no current result."""
    current = set()
    for r in iter_results(results_dir, kind=ResultKind.SAE, model=model, layer=layer):
        key = (r.name, r.eval_name, r.config_tag)
        if key not in expected:
            continue
        identity_hash, digest = expected[key]
        if (
            digest is not None
            and r.identity.get("hash") == identity_hash
            and r.provenance.get("sae_weights_sha256") == digest
        ):
            current.add(key)
    return current


def seed_group(results_of_one_sae: Mapping[str, Mapping[str, Any]]) -> str:
    """The key under which results may be averaged over seeds: the result identity's "group" (the SAE's identity
    without its seed, on the same evaluation data), so SAEs trained or evaluated under other settings are never
    merged; results written before identities existed fall back to (variant, k, preset, corpus)."""
    first = results_of_one_sae.get("core") or next(iter(results_of_one_sae.values()), {})
    group = (first.get("identity") or {}).get("group")
    if group:
        return str(group)
    prov = first.get("provenance") or {}
    return "|".join(str(prov.get(key)) for key in ("variant", "k", "preset", "corpus"))
