"""Finding the folders a run wrote: run and results folders are named `<sae_id>-<hash8>` by their identity."""

from __future__ import annotations

from pathlib import Path


def sae_folder(root: Path, model: str, layer: int, sae_id: str) -> Path:
    """The one folder of SAE `sae_id` under `root/<model>/layer_<L>/` (a runs or results dir)."""
    matches = sorted(Path(root, model, f"layer_{layer}").glob(f"{sae_id}-*"))
    assert len(matches) == 1, f"expected one folder for {sae_id}, found {[m.name for m in matches]}"
    return matches[0]


SPARSE_PROBING_SMALL = [
    'sparse_probing.dataset_names=["code"]',
    "sparse_probing.train_per_class=20",
    "sparse_probing.test_per_class=20",
    "sparse_probing.min_per_class=20",
    "sparse_probing.context_length=32",
    "sparse_probing.k_values=[1,2]",
    "sparse_probing.n_bootstrap=100",
]
"""Options that shrink sparse probing to one small dataset (the tiny end-to-end runs)."""


def tiny_run_argv(folder: Path, tmp: Path) -> list[str]:
    """`abstopk_eval.run` arguments for a smoke run of a tiny model folder (TopK and AbsTopK; core and a small
    sparse probing) writing only under `tmp`."""
    options = [a for opt in SPARSE_PROBING_SMALL for a in ("--eval-option", opt)]
    return [
        "--model",
        str(folder),
        "--preset",
        "smoke",
        "--variants",
        "topk",
        "abstopk",
        "--evals",
        "core",
        "sparse_probing",
        *options,
        "--results-dir",
        str(tmp / "results"),
        "--runs-dir",
        str(tmp / "runs"),
        "--reports-dir",
        str(tmp / "reports"),
        "--cache-dir",
        str(tmp / "cache"),
        "-q",
    ]
