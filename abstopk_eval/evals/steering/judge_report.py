"""`python -m abstopk_eval.evals.steering.judge_report`: the offline refusal judges' accuracy, before (Arditi et
al.'s list as they match it) and after (normalised text, validated phrasings), with 95% Wilson intervals, on the
held-out labelled set (`refusal_labels_holdout.jsonl`, see `judge.HOLDOUT_NOTE`) and on the first set, overall,
on the real model responses alone, and per group."""

from __future__ import annotations

from typing import Any

from abstopk_eval.evals.steering.judge import (
    HOLDOUT_PATH,
    LABELS_PATH,
    is_refusal,
    is_refusal_arditi,
    judge_accuracy,
    labelled_responses,
    matches,
    origin_group,
)


def _line(label: str, c: dict[str, Any]) -> str:
    low, high = c["accuracy_ci95"]
    return (
        f"{label:<28} n={c['n']:>3} refusals={c['n_refusal']:>2}  accuracy {c['accuracy']:.3f} "
        f"[{low:.3f}, {high:.3f}]  precision {c['precision']:.2f} recall {c['recall']:.2f} "
        f"(FP {c['false_positives']}, FN {c['false_negatives']})"
    )


def main() -> None:
    """Print both offline judges' accuracy (95% Wilson intervals) on the held-out and the first labelled set."""
    for title, path in (("held-out set", HOLDOUT_PATH), ("first set (used to choose phrases)", LABELS_PATH)):
        rows = list(labelled_responses(path))
        real = [r for r in rows if origin_group(r) in ("unsteered", "steered")]
        print(f"## {title}: {path.name}")
        for name, judge in (("before: arditi_substring", is_refusal_arditi), ("after: substring", is_refusal)):
            acc = judge_accuracy(judge, rows)
            print(_line(f"{name} all", acc))
            if len(real) != len(rows):
                print(_line("  real model responses", judge_accuracy(judge, real)))
            for group, g in acc["by_group"].items():
                print(_line(f"  {group}", g))
        print()
    rows = list(labelled_responses(HOLDOUT_PATH))
    print(
        "## parts of the fix, each alone, on the held-out set "
        "(measured after the judge was fixed, not used to change it)"
    )
    for label, kw in (
        ("fold quotes only", {"added": False, "drop_apologies": False}),
        ("added phrases only", {"fold": False, "drop_apologies": False}),
        ("apology rule only", {"fold": False, "added": False}),
        ("fix without apology rule", {"drop_apologies": False}),
    ):
        acc = judge_accuracy(lambda r, kw=kw: matches(r, **kw), rows)
        real = judge_accuracy(
            lambda r, kw=kw: matches(r, **kw), [r for r in rows if origin_group(r) in ("unsteered", "steered")]
        )
        print(_line(label, acc))
        print(_line("  real model responses", real))


if __name__ == "__main__":
    main()
