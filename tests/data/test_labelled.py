"""Offline labelled datasets (sparse probing / SCR / TPP inputs): loading, balancing, cards, errors."""

from __future__ import annotations

from collections import Counter

import pytest

from abstopk_eval.data import labelled
from abstopk_eval.data.labelled import (
    LABELLED_DATASETS,
    MAX_CHARS,
    DataCard,
    LabelledDataset,
    check_min_per_class,
    load_labelled,
    truncate,
    write_data_cards,
)
from abstopk_eval.errors import UserError

NAMES = ["sentiment", "language", "code", "topic", "domain-sentiment"]


def test_registry_has_the_documented_datasets():
    assert sorted(LABELLED_DATASETS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_full_dataset_is_balanced_and_well_formed(name):
    ds = load_labelled(name)
    assert isinstance(ds, LabelledDataset) and ds.name == name and ds.card.name == name
    n = len(ds.texts)
    assert n == len(ds.labels) > 0
    counts = Counter(ds.labels)
    assert set(counts) == set(range(len(ds.class_names)))
    assert len(set(counts.values())) == 1, counts  # balanced
    assert min(counts.values()) >= 300
    assert ds.card.counts == {c: counts[i] for i, c in enumerate(ds.class_names)}
    assert all(t.strip() and len(t) <= MAX_CHARS for t in ds.texts)
    assert len(set(ds.texts)) == n  # no duplicates
    for key, values in ds.attributes.items():
        assert len(values) == n and set(values) == set(range(len(ds.attribute_names[key])))
    assert ds.card.source and ds.card.license and ds.card.derivation
    assert ds.card.to_dict()["counts"] == ds.card.counts


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_deterministic_per_seed_and_capped(name):
    a = load_labelled(name, max_per_class=40, seed=1)
    b = load_labelled(name, max_per_class=40, seed=1)
    c = load_labelled(name, max_per_class=40, seed=2)
    assert (a.texts, a.labels, a.attributes) == (b.texts, b.labels, b.attributes)
    assert a.texts != c.texts
    assert set(Counter(a.labels).values()) == {40}
    assert a.card.counts == dict.fromkeys(a.class_names, 40)


def test_attributes_are_balanced_within_each_class():
    ds = load_labelled("domain-sentiment", max_per_class=40)
    assert ds.class_names == ["amazon", "movie"] and ds.attribute_names == {"sentiment": ["negative", "positive"]}
    assert Counter(zip(ds.labels, ds.attributes["sentiment"])) == {(0, 0): 20, (0, 1): 20, (1, 0): 20, (1, 1): 20}
    full = load_labelled("domain-sentiment")
    assert len(set(Counter(zip(full.labels, full.attributes["sentiment"])).values())) == 1
    sent = load_labelled("sentiment", max_per_class=100)
    assert set(Counter(zip(sent.labels, sent.attributes["domain"])).values()) == {25}


def test_labels_mean_what_the_card_says():
    topic = load_labelled("topic", max_per_class=5)
    assert topic.class_names == ["STEM", "humanities", "social sciences", "other"]
    assert len(labelled.MMLU_SUBJECT_CATEGORY) == 57
    lang = load_labelled("language", max_per_class=200)
    english = [t for t, y in zip(lang.texts, lang.labels) if lang.class_names[y] == "en"]
    assert sum(" the " in t for t in english) > 150
    code = load_labelled("code", max_per_class=200)
    py = [t for t, y in zip(code.texts, code.labels) if code.class_names[y] == "python"]
    assert sum("def " in t or "import " in t or "self" in t for t in py) > 100
    sent = load_labelled("sentiment")
    assert "question" not in topic.texts and sent.class_names == ["negative", "positive"]


def test_unknown_name_lists_known_datasets():
    with pytest.raises(UserError) as err:
        load_labelled("no-such-dataset")
    msg = str(err.value)
    assert "\n" not in msg and "no-such-dataset" in msg and all(n in msg for n in NAMES)


def test_bad_max_per_class():
    with pytest.raises(UserError, match="max_per_class"):
        load_labelled("topic", max_per_class=0)


def test_check_min_per_class():
    ds = load_labelled("topic", max_per_class=10)
    check_min_per_class(ds, 10)
    with pytest.raises(UserError, match=r"dataset topic has only 10 examples of class STEM \(need >= 11\)"):
        check_min_per_class(ds, 11)


def test_missing_package_names_the_setup_command():
    with pytest.raises(UserError, match="bash scripts/setup.sh"):
        labelled._package_file("topic", "no_such_module_abc", "no-such-package", "1.0", "data/x")


def test_missing_vader_sdist_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSTOPK_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="bash scripts/setup.sh"):
        labelled._vader_ratings.__wrapped__()


def test_truncate_cuts_at_a_boundary():
    assert truncate("  short  ") == "short"
    words = "word " * 200
    cut = truncate(words, 100)
    assert len(cut) <= 100 and cut.endswith("word")
    lines = "\n".join(["x = 1"] * 200)
    assert truncate(lines, 100).endswith("x = 1")


def test_write_data_cards(tmp_path):
    paths = write_data_cards(tmp_path)
    assert sorted(p.stem for p in paths) == sorted(NAMES)
    text = (tmp_path / "topic.md").read_text()
    counts = load_labelled("topic").card.counts
    assert "# Data card: `topic`" in text and f"| STEM | {counts['STEM']:,} |" in text
    card = DataCard(name="x", source="s", license="l", derivation="d", counts={"a": 1, "b": 2})
    assert "| **total** | 3 |" in card.to_markdown()
