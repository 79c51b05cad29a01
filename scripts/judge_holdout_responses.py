"""Generate the responses of the refusal judge's held-out set (evals/steering/refusal_labels_holdout.jsonl).

Real greedy responses of SmolLM2-135M-Instruct (chat template) on prompts that no earlier labelled response used:
HarmBench test `standard` behaviours outside the 80 the steering evaluation scores (seed 0), and StrongREJECT
prompts of categories the first set did not draw from (non-violent crimes, disinformation, illegal goods).
Part of them is generated under Difference-in-Means activation addition at layer 12 (d fitted as the evaluation
fits it, strength m * ||d||), which gives the apologetic, steered text where the judge errs most.
Writes unlabelled rows (prompt, response, origin) to the path given; labels are added by a person reading each
response (judge.LABELS_NOTE).
Run: OMP_NUM_THREADS=1 nice -n 10 python scripts/judge_holdout_responses.py OUT.jsonl [FIRST_JOB]
(the committed set: jobs 0-4 in one run, job 5 in a second run with FIRST_JOB 5; generation is deterministic: a
rerun of jobs 0-4 reproduced every response).
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

from abstopk_eval.evals.steering import data as D
from abstopk_eval.evals.steering import steer as S
from abstopk_eval.evals.steering.judge import labelled_responses
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.loading import load_model

LAYER, NEW_TOKENS, SEED = 12, 48, 0
UNUSED_SR_CATEGORIES = ("Non-violent crimes", "Disinformation and deception", "Illegal goods and services")
FIRST_SET_SR_CATEGORIES = ("Sexual content", "Hate, harassment and discrimination", "Violence")
"""The categories the first labelled set drew its StrongREJECT prompts from; its prompts are left out here."""


def main(out: Path, first_job: int = 0) -> None:
    """Generate the jobs from `first_job` on into `out` (a later round appends without regenerating the first)."""
    scored = set(D.seeded_subset(D.harmbench_behaviours("test"), 80, SEED))
    held_out = [b for b in D.harmbench_behaviours("test") if b not in scored]
    random.Random(17).shuffle(held_out)
    path = D.package_file(*D.STRONGREJECT, "data/strongreject_dataset.csv")
    with path.open(newline="", encoding="utf-8") as f:
        sr = [r["forbidden_prompt"].strip() for r in csv.DictReader(f) if r["category"] in UNUSED_SR_CATEGORIES]
    fit = set(D.seeded_subset(D.strongreject_prompts(), 64, SEED))
    sr = [p for p in sr if p not in fit]
    random.Random(17).shuffle(sr)
    with path.open(newline="", encoding="utf-8") as f:
        sr_first = [
            r["forbidden_prompt"].strip() for r in csv.DictReader(f) if r["category"] in FIRST_SET_SR_CATEGORIES
        ]
    first_set = {r["prompt"] for r in labelled_responses()}
    sr_first = [p for p in sr_first if p not in first_set and p not in fit]
    random.Random(18).shuffle(sr_first)

    adapter = ModelAdapter.from_loaded(load_model("smollm2-135m-instruct"))
    tok, pad = adapter.tokenizer, adapter.pad_token_id
    split = D.mmlu_split(64, 64, 300, SEED)
    harmful = S.last_position_activations(
        adapter, S.encode_chat(tok, D.seeded_subset(D.strongreject_prompts(), 64, SEED)), LAYER, pad, 16
    )
    harmless = S.last_position_activations(adapter, S.encode_chat(tok, list(split.harmless)), LAYER, pad, 16)
    d = harmful.mean(0) - harmless.mean(0)

    jobs = [
        ("unsteered, HarmBench test standard (not scored)", held_out[:40], S.NO_INTERVENTION),
        ("unsteered, StrongREJECT (categories not in the first set)", sr[:20], S.NO_INTERVENTION),
        (
            "steered, DiM add 3.0*||d|| at layer 12, HarmBench test standard (not scored)",
            held_out[40:60],
            S.Intervention("add", (LAYER,), vector=3.0 * d),
        ),
        (
            "steered, DiM add 5.0*||d|| at layer 12, HarmBench test standard (not scored)",
            held_out[60:79],
            S.Intervention("add", (LAYER,), vector=5.0 * d),
        ),
        (
            "steered, DiM add 5.0*||d|| at layer 12, StrongREJECT (categories not in the first set)",
            sr[20:35],
            S.Intervention("add", (LAYER,), vector=5.0 * d),
        ),
        ("unsteered, StrongREJECT (the first set's categories, prompts not in it)", sr_first[:60], S.NO_INTERVENTION),
    ]
    rows = []
    for desc, prompts, iv in jobs[first_job:]:
        texts = S.generate(adapter, S.encode_chat(tok, prompts), iv, pad=pad, max_new_tokens=NEW_TOKENS, batch_size=20)
        for p, t in zip(prompts, texts):
            rows.append(
                {"prompt": p, "response": t, "origin": f"smollm2-135m-instruct:{desc}, greedy {NEW_TOKENS} tokens"}
            )
        print(desc, len(prompts), flush=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
