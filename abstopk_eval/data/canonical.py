"""Canonical (hub) datasets of the evaluations that have an offline stand-in: WMDP-bio and sae_bench's MMLU
retain subjects (unlearning), RAVEL's own prompts and attributes (RAVEL), the Pile (core's held-out text).

Every loader reads, in this order:

1. a local copy under `$ABSTOPK_EVAL_DATASETS_DIR` (`local_dir`): `<owner>__<name>/<config or default>/` holding
   the dataset's files in its hub format (`*.parquet` or `*.jsonl` rows for `datasets`; RAVEL's `*.json` files),
   for machines without the hub and for tests;
2. the hub through the library SAEBench uses for it (`datasets.load_dataset(<hub id>, <config>)`, which also
   serves a populated Hugging Face datasets cache under HF_DATASETS_OFFLINE=1; `huggingface_hub.snapshot_download`
   for RAVEL's files, which serves the hub cache under HF_HUB_OFFLINE=1).

A dataset that neither gives is one `UserError` line. `available_offline` says, before any work, whether a
dataset can be read without the hub (the evaluations' `needs_hub` uses it, so an unreachable hub fails up front).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from abstopk_eval.errors import UserError
from abstopk_eval.io import MMLUQuestion

LOCAL_DIR_ENV = "ABSTOPK_EVAL_DATASETS_DIR"
"""Folder of local copies of the canonical datasets (see the module docstring)."""

WMDP = ("cais/wmdp", "wmdp-bio", "test")
"""WMDP-bio's questions (hub id, config, split), as sae_bench's unlearning evaluation loads them."""
MMLU_HUB = "cais/mmlu"
"""MMLU on the hub, one config per subject (names with underscores), split 'test', as sae_bench loads it."""
RAVEL_REPO = "adamkarvonen/ravel_prompts"
"""RAVEL's prompts and entity attributes as sae_bench's RAVEL evaluation downloads them (a hub dataset repo)."""
RAVEL_FILES = ("entity_attributes", "attribute_to_prompts", "prompt_to_split", "entity_to_split")
"""RAVEL's four files per entity type: `ravel_<type>_<file>.json`."""
PILE = ("monology/pile-uncopyrighted", None, "train")


def local_dir(repo: str, config: str | None = None) -> Path | None:
    """The local copy of `repo` (and `config`) under `$ABSTOPK_EVAL_DATASETS_DIR`, if there is one."""
    root = os.environ.get(LOCAL_DIR_ENV)
    if not root:
        return None
    folder = Path(root).expanduser() / repo.replace("/", "__") / (config or "default")
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def _in_datasets_cache(repo: str, config: str | None) -> bool:
    """Whether `datasets` has `repo` / `config` prepared in its cache (what it serves under HF_DATASETS_OFFLINE)."""
    try:
        import datasets
    except ImportError:
        return False
    root = Path(datasets.config.HF_DATASETS_CACHE) / repo.replace("/", "___")
    return (root / (config or "default")).is_dir() if config else root.is_dir()


def available_offline(repo: str, config: str | None = None) -> bool:
    """`repo` / `config` can be read without the hub: a local copy or a prepared `datasets` cache."""
    return local_dir(repo, config) is not None or _in_datasets_cache(repo, config)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def _unavailable(what: str, err: BaseException) -> UserError:
    return UserError(
        f"{what} needs the Hugging Face hub or a local copy under ${LOCAL_DIR_ENV} ({_one_line(err)}); "
        "use the offline data (--datasets offline)"
    )


def hub_rows(repo: str, config: str | None, split: str, *, what: str) -> list[dict[str, Any]]:
    """Every row of one split of a hub dataset (local copy first, see the module docstring)."""
    folder = local_dir(repo, config)
    try:
        import datasets

        if folder is not None:
            files = sorted(str(p) for p in folder.glob(f"*{split}*.parquet")) or sorted(
                str(p) for p in folder.glob("*.parquet")
            )
            kind = "parquet"
            if not files:
                files = sorted(str(p) for p in folder.glob(f"*{split}*.jsonl")) or sorted(
                    str(p) for p in folder.glob("*.jsonl")
                )
                kind = "json"
            if not files:
                raise FileNotFoundError(f"no *.parquet or *.jsonl files in {folder}")
            ds = datasets.load_dataset(kind, data_files=files, split="train")
        else:
            ds = datasets.load_dataset(repo, config, split=split)
        return [dict(row) for row in ds]
    except UserError:
        raise
    except Exception as err:
        raise _unavailable(what, err) from None


def _question(row: dict[str, Any], subject: str, where: str) -> MMLUQuestion:
    choices = tuple(str(c) for c in row["choices"])
    if len(choices) != 4 or not 0 <= int(row["answer"]) < 4:
        raise UserError(f"{where}: a question without 4 choices and an answer index 0..3: {str(row)[:120]}")
    return MMLUQuestion(
        subject=subject, question=str(row["question"]).strip(), choices=choices, answer=int(row["answer"])
    )  # type: ignore[arg-type]


def wmdp_bio_questions() -> list[MMLUQuestion]:
    """WMDP-bio's test questions (cais/wmdp, config wmdp-bio), in file order."""
    repo, config, split = WMDP
    rows = hub_rows(repo, config, split, what=f"unlearning dataset_source='sae_bench' ({repo} {config})")
    return [_question(r, "wmdp-bio", repo) for r in rows]


def mmlu_hub_questions(subjects: list[str]) -> list[MMLUQuestion]:
    """MMLU test questions of `subjects` from cais/mmlu (sae_bench's retain sets), subject by subject."""
    out: list[MMLUQuestion] = []
    for subject in subjects:
        config = subject.replace(" ", "_")
        rows = hub_rows(MMLU_HUB, config, "test", what=f"unlearning retain subject {MMLU_HUB} {config}")
        out += [_question(r, subject.replace("_", " "), f"{MMLU_HUB} {config}") for r in rows]
    return out


def unlearning_datasets(retain_subjects: list[str]) -> list[tuple[str, str | None]]:
    """(hub id, config) of every dataset unlearning reads with dataset_source='sae_bench'."""
    return [WMDP[:2], *((MMLU_HUB, s.replace(" ", "_")) for s in retain_subjects)]


# ---------------------------------------------------------------------------------------------- RAVEL


def ravel_files(entity_type: str) -> dict[str, Any]:
    """RAVEL's four JSON files of `entity_type` (file name part -> parsed JSON)."""
    names = {part: f"ravel_{entity_type}_{part}.json" for part in RAVEL_FILES}
    folder = local_dir(RAVEL_REPO)
    what = f"ravel dataset_source='sae_bench' ({RAVEL_REPO}, entity type {entity_type!r})"
    try:
        if folder is None:
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(repo_id=RAVEL_REPO, repo_type="dataset", allow_patterns=list(names.values()))
            )
        missing = [n for n in names.values() if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} has no {', '.join(missing)}")
        return {part: json.loads((folder / name).read_text(encoding="utf-8")) for part, name in names.items()}
    except UserError:
        raise
    except Exception as err:
        raise _unavailable(what, err) from None


def ravel_available_offline(entity_types: list[str]) -> bool:
    folder = local_dir(RAVEL_REPO)
    if folder is not None:
        return all((folder / f"ravel_{t}_{p}.json").is_file() for t in entity_types for p in RAVEL_FILES)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=RAVEL_REPO, repo_type="dataset", local_files_only=True)
        return True
    except Exception:
        return False


def ravel_entities(entity_type: str, attributes: list[str], max_entities: int | None) -> Any:
    """RAVEL's entities of `entity_type` with their values of `attributes` and RAVEL's own templates, as an
    `EntityData` (entities with every attribute, in file order; templates with one `%s`, a template that starts
    with '{' counting as JSON style)."""
    from abstopk_eval.data.facts import EntityData, Template

    files = ravel_files(entity_type)
    values_by_entity: dict[str, dict[str, Any]] = files["entity_attributes"]
    templates_by_attr: dict[str, list[str]] = files["attribute_to_prompts"]
    known = sorted(templates_by_attr)
    unknown = [a for a in attributes if a not in templates_by_attr]
    if unknown:
        raise UserError(f"RAVEL entity type {entity_type!r} has no attribute {unknown[0]!r}; known: {', '.join(known)}")
    values = {
        str(e): {a: str(v[a]) for a in attributes}
        for e, v in values_by_entity.items()
        if all(v.get(a) not in (None, "") for a in attributes)
    }
    if max_entities:
        values = dict(list(values.items())[:max_entities])
    templates = {
        a: tuple(
            Template(t, "json" if t.lstrip().startswith("{") else "natural")
            for t in templates_by_attr[a]
            if t.count("%s") == 1
        )
        for a in attributes
    }
    return EntityData(
        entity_type=entity_type,
        attributes=tuple(attributes),
        values=values,
        templates=templates,
        source=f"Hugging Face hub dataset {RAVEL_REPO} (RAVEL, as sae_bench's RAVEL evaluation downloads it)",
        license="see the RAVEL dataset card (Huang et al., 2024)",
        derivation=f"ravel_{entity_type}_entity_attributes.json values and "
        f"ravel_{entity_type}_attribute_to_prompts.json templates, entities with every selected attribute, "
        "in file order",
    )


# ---------------------------------------------------------------------------------------------- the Pile


def pile_documents() -> Iterator[str]:
    """The Pile's documents (local copy's `*.jsonl` / `*.parquet` rows, else streamed from the hub)."""
    repo, config, split = PILE
    if local_dir(repo, config) is not None:
        for row in hub_rows(repo, config, split, what=f"core dataset_source='pile' ({repo})"):
            text = str(row.get("text", "")).strip()
            if text:
                yield text
        return
    from abstopk_eval.data.corpus import _iter_pile

    yield from _iter_pile()
