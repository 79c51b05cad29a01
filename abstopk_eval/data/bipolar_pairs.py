"""Minimal sentence pairs on bipolar axes (man/woman, hot/cold, increase/decrease, ...) for the Figure 1 study.

Written for this project (no packaged dataset has them): each axis lists word pairs (pole A, pole B) and
sentence templates in which either word fits. A pair instance is one template filled with both words; it is
kept only when, under the model's tokenizer, the two sentences have the same length and differ in exactly
one token (the word), so the two activations at that position differ by the concept alone.
`python -m abstopk_eval.data.bipolar_pairs [DIR]` writes the data card.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abstopk_eval.errors import UserError
from abstopk_eval.io import atomic_write_text


@dataclass(frozen=True)
class Axis:
    name: str
    poles: tuple[str, str]
    words: tuple[tuple[str, str], ...]
    templates: tuple[str, ...]


AXES: tuple[Axis, ...] = (
    Axis(
        "gender (nouns)",
        ("male", "female"),
        (
            ("man", "woman"),
            ("king", "queen"),
            ("boy", "girl"),
            ("father", "mother"),
            ("brother", "sister"),
            ("husband", "wife"),
        ),
        (
            "Yesterday the {} walked into the room.",
            "I talked to the {} for an hour.",
            "Everyone agreed that the {} was right.",
            "The old {} lived near the river.",
        ),
    ),
    Axis(
        "gender (pronouns)",
        ("male", "female"),
        (("he", "she"),),
        (
            "After lunch {} went back to work.",
            "I think {} is right about this.",
            "When the phone rang, {} answered it.",
            "Nobody knew where {} had gone.",
        ),
    ),
    Axis(
        "sentiment",
        ("positive", "negative"),
        (("good", "bad"), ("great", "terrible"), ("happy", "sad"), ("wonderful", "awful"), ("beautiful", "ugly")),
        (
            "Overall the result was {}.",
            "Everyone thought the show was {}.",
            "It was a {} day for the family.",
            "The weather this week was {}.",
        ),
    ),
    Axis(
        "temperature",
        ("hot", "cold"),
        (("hot", "cold"), ("warm", "cool")),
        (
            "The water in the pool was {} this morning.",
            "It is {} outside today.",
            "The soup was too {} to eat.",
            "They kept the room {} all winter.",
        ),
    ),
    Axis(
        "change",
        ("up", "down"),
        (("increase", "decrease"), ("rise", "fall"), ("grow", "shrink")),
        (
            "Analysts expect prices to {} next year.",
            "We want the numbers to {} over time.",
            "The population will {} if nothing changes.",
            "Sales began to {} in the spring.",
        ),
    ),
    Axis(
        "size",
        ("large", "small"),
        (("big", "small"), ("large", "small"), ("tall", "short")),
        (
            "They live in a {} house near the river.",
            "It was a {} box on the table.",
            "He bought a {} car last week.",
            "There was a {} tree in the garden.",
        ),
    ),
    Axis(
        "direction",
        ("up", "down"),
        (("up", "down"),),
        (
            "The elevator went {} slowly.",
            "Prices went {} again this week.",
            "She walked {} the stairs.",
            "The plane moved {} through the clouds.",
        ),
    ),
    Axis(
        "speed",
        ("fast", "slow"),
        (("fast", "slow"), ("quick", "slow")),
        (
            "The train was very {} today.",
            "He is a {} runner.",
            "The internet connection was {}.",
            "It was a {} journey home.",
        ),
    ),
    Axis(
        "time",
        ("early", "late"),
        (("early", "late"),),
        (
            "She arrived {} for the meeting.",
            "The bus was {} again.",
            "We had dinner {} that evening.",
            "The letter came {} this year.",
        ),
    ),
    Axis(
        "brightness",
        ("bright", "dark"),
        (("light", "dark"), ("bright", "dark")),
        (
            "The room was {} when we entered.",
            "The sky was {} that evening.",
            "Her coat was {} blue.",
            "The hallway stayed {} all night.",
        ),
    ),
    Axis(
        "truth",
        ("true", "false"),
        (("true", "false"), ("right", "wrong"), ("correct", "incorrect")),
        (
            "The statement was {}.",
            "Everything he said was {}.",
            "The answer turned out to be {}.",
            "Her guess was {} in the end.",
        ),
    ),
    Axis(
        "wealth",
        ("rich", "poor"),
        (("rich", "poor"), ("wealthy", "poor")),
        (
            "They were {} people from the village.",
            "He grew up {} in the city.",
            "The {} family lived next door.",
            "She became {} after the war.",
        ),
    ),
)


@dataclass(frozen=True)
class PairInstance:
    axis: str
    words: tuple[str, str]
    template: str
    ids: tuple[list[int], list[int]]
    position: int
    """Index of the one token where the two sentences differ."""


def axis_names() -> list[str]:
    return [a.name for a in AXES]


def build_instances(
    tokenizer: Any, axes: list[str] | None = None
) -> tuple[list[PairInstance], dict[str, dict[str, int]]]:
    """Tokenised single-token minimal pairs, and per axis how many instances were written and kept."""
    known = {a.name: a for a in AXES}
    chosen = [known[name] if name in known else _unknown(name) for name in (axes or list(known))]
    kept: list[PairInstance] = []
    counts: dict[str, dict[str, int]] = {}
    for axis in chosen:
        written = survived = 0
        for words in axis.words:
            for template in axis.templates:
                written += 1
                ids = tuple(list(tokenizer.encode(template.format(w))) for w in words)
                diff = [i for i, (a, b) in enumerate(zip(*ids)) if a != b]
                if len(ids[0]) == len(ids[1]) and len(diff) == 1:
                    kept.append(PairInstance(axis.name, words, template, ids, diff[0]))  # type: ignore[arg-type]
                    survived += 1
        counts[axis.name] = {"written": written, "kept": survived}
    return kept, counts


def _unknown(name: str):
    raise UserError(f"unknown bipolar axis {name!r}; known: {', '.join(axis_names())}")


def data_card() -> str:
    lines = [
        "# Data card: bipolar minimal pairs (`abstopk_eval/data/bipolar_pairs.py`)",
        "",
        "- **Source**: written for this project (no packaged dataset of bipolar minimal pairs exists offline).",
        "- **License**: MIT (project code).",
        "- **Derivation**: each axis has word pairs (pole A, pole B) and templates where either word fits; an "
        "instance fills one template with both words and is kept only if the two tokenised sentences differ in "
        "exactly one token. Counts of kept instances depend on the tokenizer and are stored in every result.",
        "",
        "| axis | poles | word pairs | templates | instances written |",
        "|---|---|---|---|---|",
    ]
    for a in AXES:
        pairs = ", ".join(f"{x}/{y}" for x, y in a.words)
        lines.append(
            f"| {a.name} | {a.poles[0]} / {a.poles[1]} | {pairs} | {len(a.templates)} | "
            f"{len(a.words) * len(a.templates)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/data_cards")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bipolar_pairs.md", data_card())
    print(out / "bipolar_pairs.md")
