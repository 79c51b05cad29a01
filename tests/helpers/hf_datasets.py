"""Local copies of hub datasets for the canonical-data tests: a prepared Hugging Face `datasets` cache (what
`datasets.load_dataset(<hub id>, <config>)` reads under HF_DATASETS_OFFLINE=1) and the `$ABSTOPK_EVAL_DATASETS_DIR`
layout (`abstopk_eval.data.canonical`). Nothing is downloaded."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd


def populate_datasets_cache(cache_dir: Path, repo: str, config: str, splits: dict[str, list[dict[str, Any]]]) -> Path:
    """Prepare `repo` / `config` in the `datasets` cache at `cache_dir` from rows per split, in the layout a real
    download leaves (`<owner>___<name>/<config>/<version>/<hash>/` with arrow files and dataset_info.json)."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache_dir = Path(cache_dir)
    owner, name = repo.split("/")
    files = {}
    for split, rows in splits.items():
        path = cache_dir / "_sources" / f"{name}-{config}-{split}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(path)
        files[split] = str(path)
    builder = Parquet(
        cache_dir=str(cache_dir), dataset_name=name, config_name=config, data_files=files, hash="0" * 16, repo_id=repo
    )
    builder.download_and_prepare()
    root = cache_dir / f"{owner}___{name}"
    built = [Path(p) for p in glob.glob(str(root / f"{config}-*"))]  # the builder suffixes its data files' hash
    target = root / config
    os.rename(built[0], target)
    info = next(target.glob("*/*/dataset_info.json"))
    assert json.loads(info.read_text())["config_name"] == config
    return target


def write_local_copy(root: Path, repo: str, config: str | None, files: dict[str, Any]) -> Path:
    """`files` (name -> rows for `*.jsonl`, or JSON for `*.json`) under `root/<owner>__<name>/<config>/`."""
    folder = Path(root) / repo.replace("/", "__") / (config or "default")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith(".jsonl"):
            text = "".join(json.dumps(r) + "\n" for r in content)
        else:
            text = json.dumps(content)
        (folder / name).write_text(text, encoding="utf-8")
    return folder
