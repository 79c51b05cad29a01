"""Canonical (hub) dataset loaders, offline: the real `datasets.load_dataset(<hub id>)` path against a prepared
`datasets` cache (HF_DATASETS_OFFLINE), and local copies under $ABSTOPK_EVAL_DATASETS_DIR, in each dataset's
hub format; a dataset neither gives is one UserError."""

from __future__ import annotations

import pytest

from abstopk_eval.data import canonical
from abstopk_eval.errors import UserError
from tests.helpers.hf_datasets import populate_datasets_cache, write_local_copy

WMDP_ROWS = [
    {"question": f"Which agent {i}?", "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4}
    for i in range(6)
]


@pytest.fixture
def offline_datasets_cache(tmp_path, monkeypatch):
    """An empty `datasets` cache in offline mode (what a machine without the hub has)."""
    import datasets

    cache = tmp_path / "hf_datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv(canonical.LOCAL_DIR_ENV, raising=False)
    return cache


def test_wmdp_through_datasets_load_dataset_from_a_populated_cache(offline_datasets_cache):
    assert not canonical.available_offline("cais/wmdp", "wmdp-bio")
    with pytest.raises(UserError, match="needs the Hugging Face hub or a local copy"):
        canonical.wmdp_bio_questions()
    populate_datasets_cache(offline_datasets_cache, "cais/wmdp", "wmdp-bio", {"test": WMDP_ROWS})
    assert canonical.available_offline("cais/wmdp", "wmdp-bio")
    questions = canonical.wmdp_bio_questions()
    assert [q.question for q in questions] == [r["question"] for r in WMDP_ROWS]
    assert questions[3].choices == ("a3", "b3", "c3", "d3") and questions[3].answer == 3
    assert {q.subject for q in questions} == {"wmdp-bio"}


def test_local_copy_wins_and_reads_jsonl_and_parquet(tmp_path, monkeypatch, offline_datasets_cache):
    monkeypatch.setenv(canonical.LOCAL_DIR_ENV, str(tmp_path / "copies"))
    rows = [{"question": "q?", "subject": "human_aging", "choices": ["w", "x", "y", "z"], "answer": 2}]
    write_local_copy(tmp_path / "copies", "cais/mmlu", "human_aging", {"test.jsonl": rows})
    assert canonical.available_offline("cais/mmlu", "human_aging")
    (q,) = canonical.mmlu_hub_questions(["human aging"])
    assert (q.subject, q.question, q.answer) == ("human aging", "q?", 2)
    with pytest.raises(UserError, match="cais/mmlu college_computer_science"):
        canonical.mmlu_hub_questions(["college computer science"])
    bad = [{"question": "q?", "choices": ["only", "three", "choices"], "answer": 0}]
    write_local_copy(tmp_path / "copies", "cais/wmdp", "wmdp-bio", {"test.jsonl": bad})
    with pytest.raises(UserError, match="4 choices"):
        canonical.wmdp_bio_questions()


def _ravel_files(entity_type: str) -> dict[str, object]:
    return {
        f"ravel_{entity_type}_entity_attributes.json": {
            "Paris": {"Country": "France", "Continent": "Europe"},
            "Tokyo": {"Country": "Japan", "Continent": "Asia"},
            "Nowhere": {"Country": "", "Continent": "Asia"},
        },
        f"ravel_{entity_type}_attribute_to_prompts.json": {
            "Country": ["%s is a city in the country of", '{"city": "%s", "country": "'],
            "Continent": ["%s is on the continent of"],
        },
        f"ravel_{entity_type}_prompt_to_split.json": {"%s is a city in the country of": "train"},
        f"ravel_{entity_type}_entity_to_split.json": {"Paris": "train", "Tokyo": "test"},
    }


def test_ravel_entities_from_ravels_own_files(tmp_path, monkeypatch):
    monkeypatch.setenv(canonical.LOCAL_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not canonical.ravel_available_offline(["city"])
    write_local_copy(tmp_path, canonical.RAVEL_REPO, None, _ravel_files("city"))
    assert canonical.ravel_available_offline(["city"]) and not canonical.ravel_available_offline(["city", "nobel"])
    data = canonical.ravel_entities("city", ["Country", "Continent"], None)
    assert data.values == {
        "Paris": {"Country": "France", "Continent": "Europe"},
        "Tokyo": {"Country": "Japan", "Continent": "Asia"},
    }  # an entity without every attribute is left out
    assert [t.style for t in data.templates["Country"]] == ["natural", "json"]
    assert data.templates["Country"][0].fill("Paris") == "Paris is a city in the country of"
    assert "adamkarvonen/ravel_prompts" in data.source
    assert list(canonical.ravel_entities("city", ["Country"], 1).values) == ["Paris"]
    with pytest.raises(UserError, match="has no attribute 'Timezone'"):
        canonical.ravel_entities("city", ["Timezone"], None)
    with pytest.raises(UserError, match="needs the Hugging Face hub or a local copy"):
        canonical.ravel_entities("nobel_prize_winner", ["Field"], None)


def test_pile_from_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv(canonical.LOCAL_DIR_ENV, str(tmp_path))
    write_local_copy(
        tmp_path, canonical.PILE[0], None, {"train.jsonl": [{"text": "a b"}, {"text": " "}, {"text": "c"}]}
    )
    assert list(canonical.pile_documents()) == ["a b", "c"]
