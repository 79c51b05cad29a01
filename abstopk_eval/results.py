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
from abstopk_eval.io import atomic_write_json

log = logging.getLogger("abstopk_eval.results")

BASELINES_DIR = "baselines"
"""The folder of a layer that holds baselines; reserved, so no SAE id may take it."""


def layer_dir(results_dir: Path, model: str, layer: int) -> Path:
    return Path(results_dir) / model / f"layer_{layer}"


def result_path(results_dir: Path, model: str, layer: int, sae_id: str, eval_name: str) -> Path:
    """results/<model>/layer_<L>/<sae_id>/<eval>.json"""
    if sae_id == BASELINES_DIR:
        raise UserError(f"{BASELINES_DIR!r} is reserved for a layer's baselines and cannot be an SAE id")
    return layer_dir(results_dir, model, layer) / sae_id / f"{eval_name}.json"


def baseline_path(results_dir: Path, model: str, layer: int, eval_name: str, method: str) -> Path:
    """results/<model>/layer_<L>/baselines/<eval>/<method>.json"""
    return layer_dir(results_dir, model, layer) / BASELINES_DIR / eval_name / f"{method}.json"


def write_eval_output(path: Path, output: Any) -> None:
    """Validate (pydantic dataclass) and write atomically."""
    atomic_write_json(Path(path), asdict(output))


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

    @property
    def provenance(self) -> dict[str, Any]:
        return self.data.get("provenance") or {}


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
    report)."""
    for path, found_kind in sorted(_candidates(Path(results_dir), model, layer), key=lambda found: found[0]):
        if kind is not None and found_kind is not kind:
            continue
        if found_kind is ResultKind.SAE:
            name, evaluation, folder = path.parent.name, path.stem, path.parent.parent
        else:
            name, evaluation, folder = path.stem, path.parent.name, path.parent.parent.parent
        if eval_name is not None and evaluation != eval_name:
            continue
        layer_number = _layer_of(folder)
        if layer_number is None:
            continue  # not a layer_<L> folder: not part of the layout
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):
            log.warning("skipping unreadable result %s", path)
            continue
        yield ResultRecord(folder.parent.name, layer_number, found_kind, name, evaluation, path, data)


def current_results(
    results_dir: Path, model: str, layer: int, digests: Mapping[str, str | None]
) -> set[tuple[str, str]]:
    """(SAE id, evaluation) pairs of one layer whose result scored the checkpoint with the given weights digest,
    so a retrained (or replaced) SAE is evaluated again; an SAE whose digest is None has no current result."""
    return {
        (r.name, r.eval_name)
        for r in iter_results(results_dir, kind=ResultKind.SAE, model=model, layer=layer)
        if digests.get(r.name) is not None and r.provenance.get("sae_weights_sha256") == digests[r.name]
    }
