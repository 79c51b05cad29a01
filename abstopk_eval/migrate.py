"""`python -m abstopk_eval.migrate [RESULTS_DIR]`: give results written before run identities existed their identity.

Old layout: `<model>/layer_<L>/<sae_id>/<eval>.json`, with no identity. Each such SAE folder is renamed to the folder
its identity names (`<sae_id>-<hash8>`, see `abstopk_eval.identity`), an identity.json is written beside the
results, and every result file gets the `identity` block a run would write, reconstructed from what the result
itself records: model, layer, corpus, preset (by name: the preset's values as this code defines them), variant,
k, seed, training path and precision, and the evaluation config it stored. A result whose stored config differs
from the evaluation's current defaults keeps that config in its identity, so it is never taken as current under
today's defaults (`python -m abstopk_eval.verify` lists it as stale). Every migrated identity says
`"migrated": true`. Folders that already have an identity, baselines and unreadable files are left alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from abstopk_eval import cli
from abstopk_eval import evals as _evals  # noqa: F401  (registers the evaluations)
from abstopk_eval.config import get_preset
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.options import config_identity
from abstopk_eval.identity import IDENTITY_JSON, SHORT, ResultIdentity, identity_hash
from abstopk_eval.io import atomic_write_json
from abstopk_eval.models.registry import get_model_spec
from abstopk_eval.results import CONFIG_TAG_SEP, ResultKind, iter_results
from abstopk_eval.workflow import RunIdentities, RunPlan, group_hash, results_folder, train_identity

log = logging.getLogger("abstopk_eval.migrate")


def _stored_config(eval_name: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The stored config as an identity config: the current identity's keys, taking a value the run filled in
    where the default is None (e.g. SCR's chosen class pairs) as the default it was resolved from."""
    default = config_identity(eval_name)
    plain = json.loads(json.dumps({k: stored.get(k) for k in default}, sort_keys=True, default=str))
    return {k: default[k] if default[k] is None else plain[k] for k in default}


def _plan_of(prov: dict[str, Any], metadata: dict[str, Any]) -> RunPlan:
    spec = get_model_spec(str(prov["model"]))
    return RunPlan(
        model=spec,
        layer=int(prov["layer"]),
        variants=[prov["variant"]],
        ks=[prov.get("k") or spec.paper_k],
        seeds=[int(prov.get("seed") or 0)],
        preset=get_preset(str(prov["preset"])),
        evals=[],
        corpus=str(prov["corpus"]),
        sparse_training=not str(metadata.get("training_path", "sparse")).startswith("sae_lens"),
        bf16_training=metadata.get("encoder_dtype") == "bfloat16",
    )


def migrate_folder(folder: Path, results: dict[str, Any]) -> Path:
    """Give one old SAE results folder its identity; returns its new path."""
    first = results.get("core") or next(iter(results.values()))
    prov = first.get("provenance") or {}
    metadata = (first.get("sae_cfg_dict") or {}).get("metadata") or {}
    if str(prov.get("variant", "")).startswith("ext-") or prov.get("source_sha256"):
        raise UserError(f"{folder}: checkpoints from disk cannot be migrated; evaluate them again with compare")
    plan = _plan_of(prov, metadata)
    ids = RunIdentities.of(plan)
    train = train_identity(plan, ids, plan.variants[0], plan.ks[0], plan.seeds[0]).record()
    new = folder.parent / results_folder(folder.name, train["hash"], ids.eval_data.hash)
    group = group_hash(train, ids.eval_data.hash)
    for eval_name, data in results.items():
        config = _stored_config(eval_name, data.get("eval_config") or {})
        tag = None if config == config_identity(eval_name) else identity_hash(config)[:SHORT]
        identity = ResultIdentity(sae=train["hash"], eval_data=ids.eval_data.hash, eval_name=eval_name, config=config)
        data["identity"] = {**identity.record(), "group": group, "options": {}, "migrated": True}
        if tag is not None:
            data["identity"]["stale_config"] = True  # an older code version's defaults: never current today
        atomic_write_json(folder / f"{eval_name}.json", data)
    atomic_write_json(
        folder / IDENTITY_JSON,
        {"sae": train, "eval_data": ids.eval_data.record(), "group": group, "migrated": True},
    )
    folder.rename(new)
    return new


def migrate(results_dir: Path) -> list[Path]:
    by_folder: dict[Path, dict[str, Any]] = {}
    for r in iter_results(results_dir, kind=ResultKind.SAE):
        if r.identity or (r.path.parent / IDENTITY_JSON).exists() or CONFIG_TAG_SEP in r.path.stem:
            continue
        by_folder.setdefault(r.path.parent, {})[r.eval_name] = r.data
    moved = []
    for folder, results in sorted(by_folder.items()):
        moved.append(migrate_folder(folder, results))
        log.info("migrated %s -> %s", folder, moved[-1].name)
    return moved


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = cli.new_parser("python -m abstopk_eval.migrate", __doc__)
    p.add_argument("results_dir", nargs="?", type=Path, default=Path("results"))
    cli.add_logging_arguments(p)
    args = p.parse_args(argv)
    cli.setup_logging(args.quiet)
    if not args.results_dir.is_dir():
        raise UserError(f"{args.results_dir} is not a results directory")
    moved = migrate(args.results_dir)
    print(f"migrated {len(moved)} SAE result folder(s) in {args.results_dir}")


if __name__ == "__main__":
    main()
