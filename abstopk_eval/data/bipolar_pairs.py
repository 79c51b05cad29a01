"""Minimal pairs on bipolar axes (man/woman, hot/cold, up/down, alive/dead, ...) for the Figure 1 study.

Written for this project (no packaged dataset has them). Each axis lists word pairs (pole A, pole B) and
sentence templates in which either word fits; every template is also said after each of `PREFIXES` (neutral
openings such as "I think that"), so an axis has word pairs x templates x prefixes sentence pairs. Two contexts:

- ``"context"``: a template filled with both words (a minimal sentence pair);
- ``"alone"``: the bare word right after the start token, in the forms of `ALONE_FORMS` (as written,
  capitalised, each with and without a leading space).

Both sequences get the model's start token (`models.sequence_start`). A pair is kept only when, under the model's
tokenizer, the two sequences have the same length and differ in exactly one token (the word), at a position that
is not special (the first position of a sequence without a start token is an attention sink, never scored), so
the two activations at that position differ by the concept alone. How many pairs were written and kept per axis
and context is stored in every result. Pairs sharing a template are not independent; intervals over pairs are
therefore optimistic about the data's diversity (the axes' templates are the real unit of variation).
`python -m abstopk_eval.data.bipolar_pairs [DIR]` writes the data card.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from abstopk_eval.errors import UserError
from abstopk_eval.io import atomic_write_text
from abstopk_eval.models.sequence_start import sequence_start_of

Context = Literal["context", "alone"]
CONTEXTS: tuple[Context, ...] = ("context", "alone")


@dataclass(frozen=True)
class Axis:
    name: str
    poles: tuple[str, str]
    words: tuple[tuple[str, str], ...]
    templates: tuple[str, ...]
    """Sentences with one `{}` for the word; written as they begin a sentence."""


PREFIXES: tuple[str, ...] = (
    "",
    "I think that ",
    "She said that ",
    "We were told that ",
    "To be honest, ",
    "Apparently, ",
    "He wrote that ",
    "Everyone knows that ",
)
"""Openings every template is also said after (the template's first letter is lowered unless it is "I")."""

ALONE_FORMS: tuple[str, ...] = ("{}", "{cap}", " {}", " {cap}")
"""How a bare word is written after the start token: as is, capitalised, each also with a leading space."""

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
            "Later that day {} called the office.",
            "In the morning {} felt much better.",
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
            "The ball rolled {} the hill.",
            "He looked {} at the street.",
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
            "He went to bed {} last night.",
            "The train left {} in the morning.",
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
    Axis(
        "age",
        ("young", "old"),
        (("young", "old"), ("new", "old")),
        (
            "The {} tree stood by the road.",
            "She met a {} friend at the station.",
            "It was a {} car with a red roof.",
            "They sat in the {} garden.",
        ),
    ),
    Axis(
        "life",
        ("alive", "dead"),
        (("alive", "dead"), ("living", "dead")),
        (
            "The doctor said the patient was {}.",
            "We found the bird {} in the garden.",
            "By morning the plant was {}.",
            "The soldier was {} when they found him.",
        ),
    ),
    Axis(
        "daytime",
        ("day", "night"),
        (("day", "night"), ("morning", "evening"), ("sunrise", "sunset")),
        (
            "We left the house at {}.",
            "The city is quiet during the {}.",
            "She likes to walk in the {}.",
            "They arrived late in the {}.",
        ),
    ),
    Axis(
        "openness",
        ("open", "closed"),
        (("open", "closed"), ("open", "shut")),
        (
            "The door was {} when we arrived.",
            "The shop stays {} on Sundays.",
            "He left the window {} all night.",
            "The gate was {} this morning.",
        ),
    ),
    Axis(
        "fullness",
        ("full", "empty"),
        (("full", "empty"),),
        (
            "The glass on the table was {}.",
            "The train was {} this morning.",
            "By noon the box was {}.",
            "The room was {} after the party.",
            "Her bag was {} when she left.",
            "The bottle in the fridge was {}.",
        ),
    ),
    Axis(
        "strength",
        ("strong", "weak"),
        (("strong", "weak"),),
        (
            "The coffee was very {} today.",
            "He felt {} after the race.",
            "The signal was {} in the valley.",
            "It was a {} argument.",
            "The wind was {} all day.",
            "Her voice sounded {} on the phone.",
        ),
    ),
)


@dataclass(frozen=True)
class PairInstance:
    axis: str
    words: tuple[str, str]
    template: str
    """The sentence with `{}` for the word (the prefix included), or the bare-word form."""
    ids: tuple[list[int], list[int]]
    position: int
    """Index of the one token where the two sequences differ."""
    context: Context = "context"


def axis_names() -> list[str]:
    return [a.name for a in AXES]


def sentences(axis: Axis) -> list[str]:
    """Every sentence template of `axis` (each template after each prefix), with `{}` for the word."""
    out = []
    for template in axis.templates:
        for prefix in PREFIXES:
            lowered = (
                template if not prefix or template.startswith(("I ", "{}")) else template[0].lower() + template[1:]
            )
            out.append(prefix + lowered)
    return out


def _filled(text: str, word: str, sentence_start: bool) -> str:
    filled = text.format(word, cap=word[:1].upper() + word[1:])
    return filled[:1].upper() + filled[1:] if sentence_start else filled


def build_instances(
    tokenizer: Any, axes: list[str] | None = None, contexts: tuple[Context, ...] = CONTEXTS
) -> tuple[list[PairInstance], dict[str, dict[str, dict[str, int]]]]:
    """Tokenised single-token minimal pairs, and per axis and context how many pairs were written and kept."""
    known = {a.name: a for a in AXES}
    chosen = [known[name] if name in known else _unknown(name) for name in (axes or list(known))]
    start = sequence_start_of(tokenizer)
    kept: list[PairInstance] = []
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for axis in chosen:
        counts[axis.name] = {}
        for context in contexts:
            texts = sentences(axis) if context == "context" else list(ALONE_FORMS)
            written = survived = 0
            seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
            for words in axis.words:
                for text in texts:
                    written += 1
                    ids = tuple(start.prepend(tokenizer.encode(_filled(text, w, context == "context"))) for w in words)
                    key = (tuple(ids[0]), tuple(ids[1]))
                    position = _single_difference(start, *ids)
                    if position is not None and key not in seen:
                        seen.add(key)
                        kept.append(PairInstance(axis.name, words, text, ids, position, context))  # type: ignore[arg-type]
                        survived += 1
            counts[axis.name][context] = {"written": written, "kept": survived}
    return kept, counts


def _single_difference(start, a: list[int], b: list[int]) -> int | None:
    """The one position where `a` and `b` differ, if they have one length, differ there only, and it is not a
    special position (`SequenceStart.special_mask`); else None."""
    if len(a) != len(b):
        return None
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) != 1:
        return None
    special = start.special_mask(torch.tensor([a, b]))
    return None if bool(special[:, diff[0]].any()) else diff[0]


def _unknown(name: str):
    raise UserError(f"unknown bipolar axis {name!r}; known: {', '.join(axis_names())}")


def data_card(tokenizer: Any = None, tokenizer_name: str = "") -> str:
    """The data card; with a tokenizer, the pairs kept under it per axis and context."""
    counts = build_instances(tokenizer)[1] if tokenizer is not None else None
    lines = [
        "# Data card: bipolar minimal pairs (`abstopk_eval/data/bipolar_pairs.py`)",
        "",
        "- **Source**: written for this project (no packaged dataset of bipolar minimal pairs exists offline).",
        "- **License**: MIT (project code).",
        "- **Derivation**: each axis has word pairs (pole A, pole B) and templates where either word fits, each "
        f"template also said after {len(PREFIXES) - 1} neutral openings ({', '.join(repr(p) for p in PREFIXES[1:])}); "
        "a sentence pair fills one template with both words (context 'context'), and each word is also given "
        f"alone after the start token in {len(ALONE_FORMS)} forms (context 'alone'). A pair is kept only if the "
        "two tokenised sequences differ in exactly one token at a non-special position. Counts of kept pairs "
        "depend on the tokenizer and are stored in every result.",
        "",
    ]
    header = "| axis | poles | word pairs | templates | pairs written (context / alone) |"
    if counts is not None:
        lines.insert(-1, f"- **Kept under** `{tokenizer_name}`: columns 'kept'.")
        header += " kept (context / alone) |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for a in AXES:
        pairs = ", ".join(f"{x}/{y}" for x, y in a.words)
        row = (
            f"| {a.name} | {a.poles[0]} / {a.poles[1]} | {pairs} | {len(a.templates)} | "
            f"{len(a.words) * len(sentences(a))} / {len(a.words) * len(ALONE_FORMS)} |"
        )
        if counts is not None:
            row += f" {counts[a.name]['context']['kept']} / {counts[a.name]['alone']['kept']} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/data_cards")
    tok, name = None, ""
    if len(sys.argv) > 2:  # a local tokenizer folder: also count the pairs it keeps
        from transformers import AutoTokenizer

        name = sys.argv[2]
        tok = AutoTokenizer.from_pretrained(name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bipolar_pairs.md", data_card(tok, Path(name).name))
    print(out / "bipolar_pairs.md")
