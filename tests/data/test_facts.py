"""The bundled fact data (RAVEL entities, fact domains, MMLU questions) loads as documented."""

from __future__ import annotations

import pytest

from abstopk_eval.data import facts
from abstopk_eval.errors import UserError


def test_real_fact_data_loads():
    city = facts.load_entities("city", max_entities=200)
    assert city.values["Tokyo"] == {"Country": "Japan", "Continent": "Asia", "Language": "Japanese"}
    assert len(city.values) == 200 and all(len(city.templates[a]) >= 3 for a in city.attributes)
    assert facts.load_fact_domain("country-capital").values["France"] == {"Capital": "Paris"}
    nobel = facts.load_entities("nobel_prize_winner")
    assert nobel.values["Albert Einstein"] == {"Field": "Physics", "Country of Birth": "Germany"}
    assert "Linus Carl Pauling" not in nobel.values and "Marie Curie, née Sklodowska" not in nobel.values  # two fields
    assert "Pierre Curie" in nobel.values
    assert facts.load_fact_domain("element-symbol").values["Gold"] == {"Symbol": "Au"}
    assert len(facts.mmlu_questions(["college biology"])) == 144
    with pytest.raises(UserError, match="unknown MMLU subject"):
        facts.mmlu_questions(["astrology"])
