"""Results layout, provenance and atomic, schema-checked writing."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from abstopk_eval.errors import UserError
from abstopk_eval.io import atomic_write_json

PACKAGES = ("abstopk-eval", "torch", "transformers", "sae-lens", "sae-bench", "transformer-lens", "numpy")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def layer_dir(results_dir: Path, model: str, layer: int) -> Path:
    return Path(results_dir) / model / f"layer_{layer}"


def result_path(results_dir: Path, model: str, layer: int, sae_id: str, eval_name: str) -> Path:
    """results/<model>/layer_<L>/<sae_id>/<eval>.json"""
    return layer_dir(results_dir, model, layer) / sae_id / f"{eval_name}.json"


def write_eval_output(path: Path, output: Any) -> None:
    """Validate (pydantic dataclass) and write atomically."""
    atomic_write_json(Path(path), asdict(output))


def read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"result file {path} is unreadable ({err.__class__.__name__}); delete it and rerun") from None
