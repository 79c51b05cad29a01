"""`python -m abstopk_eval.export --sae-bench DIR`: write results in SAEBench's file layout, for its graphing tools.

Every SAE result under --results-dir (`results.iter_results`, default-config results only: a result computed with
`--eval-option`s has no SAEBench counterpart of the same name) of an evaluation that SAEBench also has is written
to `DIR/eval_results/<eval type>/<sae_release>_<sae_id>_eval_results.json`, the name `sae_bench_utils.general_utils
.get_results_filepath` gives, which `graphing_utils.get_eval_results` / `get_core_results` / `plot_results` read
(they take the SAE key from the file name and the evaluation from the path).

Releases and ids: a published SAE (`compare --release`) keeps its sae_lens release and id; every other SAE gets
the release `abstopk-eval_<model>_layer_<L>` and its results folder name (`<sae>-<hash8>`) as id, so SAEs evaluated
on other data never share a file. Both go into `sae_lens_release_id` / `sae_lens_id`.

`sae_cfg_dict` gains what SAEBench reads and ours lacks: `architecture` becomes the trainer class name SAEBench's
plots group by (`standard`, `jumprelu`, `topk`, `batch_topk`, and `abstopk` / `batch_abstopk` for the signed
variants; sae_lens's own name stays in `sae_lens_architecture`, where BatchTopK is saved as `jumprelu`),
`training_tokens` (the preset's training tokens; for a checkpoint from elsewhere the count its metadata states,
else sae_bench's `CustomSAEConfig` default for "unknown"), and `model_name`, `hook_name`, `hook_layer`.
Metric categories that are not objects are dropped (SAEBench's core reader flattens every category), and
`abstopk_eval_export` records the source file and how the evaluation maps. Everything else is the result as
written, provenance included.

How each evaluation maps (`SAE_BENCH_EVALS`; fragmentation, bidirectional and steering have no SAEBench
counterpart and are not exported):

- core -> core: the same metric names (`sparsity.l0`, `model_performance_preservation.ce_loss_score`, ...), computed
  by sae_bench's formulas (zero-ablation of every position; the deviations are listed in `evals/core/main.py`), on
  this project's held-out corpus instead of the Pile; L0 counts `z != 0`.
- sparse_probing -> sparse_probing: `sae.sae_top_{k}_test_accuracy` and `llm.*`, on the offline labelled
  datasets (or SAEBench's with `dataset_source=sae_bench`).
- scr -> scr, tpp -> tpp: `scr_metrics.scr_metric_threshold_{n}`, `tpp_metrics.tpp_threshold_{n}_total_metric`,
  SAEBench's definitions on offline datasets.
- absorption -> absorption (`absorption_first_letter`): `mean.mean_absorption_fraction_score` and the rest of
  SAEBench's schema, sign-correct.
- unlearning -> unlearning: `unlearning.unlearning_score`, but the forget set is a fact domain the model knows
  (or MMLU bio/med) rather than WMDP-bio, so the numbers are not WMDP scores.
- ravel -> ravel: `ravel.disentanglement_score`, `cause_score`, `isolation_score` on offline city and laureate
  facts (SAEBench's graphing has no RAVEL reader; its RAVEL eval writes this folder).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abstopk_eval import cli
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.io import atomic_write_json
from abstopk_eval.results import ResultKind, ResultRecord, iter_results

log = logging.getLogger("abstopk_eval.export")

EVAL_RESULTS_DIR = "eval_results"
"""SAEBench's results folder (its evaluations' default `--output_folder` is eval_results/<eval type>)."""


@dataclass(frozen=True)
class SaeBenchEval:
    """One of our evaluations and the SAEBench evaluation it is exported as."""

    ours: str
    folder: str
    """eval_results/<folder>: where SAEBench writes this evaluation (and the word its graphing finds in the path)."""
    eval_type_id: str
    """sae_bench's `eval_type_id` of the evaluation (read from sae_bench's schema modules)."""
    mapping: str


def _sae_bench_evals() -> dict[str, SaeBenchEval]:
    from sae_bench.evals.absorption.eval_output import EVAL_TYPE_ID_ABSORPTION
    from sae_bench.evals.core.eval_output import EVAL_TYPE_ID_CORE
    from sae_bench.evals.ravel.eval_output import EVAL_TYPE_ID_RAVEL
    from sae_bench.evals.scr_and_tpp.eval_output import EVAL_TYPE_ID_SCR, EVAL_TYPE_ID_TPP
    from sae_bench.evals.sparse_probing.eval_output import EVAL_TYPE_ID_SPARSE_PROBING
    from sae_bench.evals.unlearning.eval_output import EVAL_TYPE_ID_UNLEARNING

    rows = [
        ("core", "core", EVAL_TYPE_ID_CORE, "same metrics; held-out corpus of the run instead of the Pile"),
        ("sparse_probing", "sparse_probing", EVAL_TYPE_ID_SPARSE_PROBING, "same metrics; offline labelled datasets"),
        ("scr", "scr", EVAL_TYPE_ID_SCR, "SAEBench's SCR; offline domain x sentiment data"),
        ("tpp", "tpp", EVAL_TYPE_ID_TPP, "SAEBench's TPP; offline language and topic data"),
        ("absorption", "absorption", EVAL_TYPE_ID_ABSORPTION, "SAEBench's first-letter absorption, sign-correct"),
        ("unlearning", "unlearning", EVAL_TYPE_ID_UNLEARNING, "forget set: known fact domain, not WMDP-bio"),
        ("ravel", "ravel", EVAL_TYPE_ID_RAVEL, "SAEBench's RAVEL method on offline city and laureate facts"),
    ]
    return {ours: SaeBenchEval(ours, folder, type_id, note) for ours, folder, type_id, note in rows}


SAE_BENCH_EVALS = _sae_bench_evals()

GRAPHING_KEYWORDS = ("tpp", "scr", "absorption", "autointerp", "sparse_probing", "unlearning", "core")
"""The words `graphing_utils.get_eval_results` looks for in a file's path, in its order: the first one found
decides how it reads the file."""

SAE_BENCH_CLASS = {"relu": "standard", "batchtopk": "batch_topk"}
"""SAEBench's trainer-class names (`graphing_utils.TRAINER_MARKERS`) where they differ from the activation name
(`saes.formats.activation_name`: hyphens become underscores)."""


def _unknown_training_tokens() -> int:
    """sae_bench's `CustomSAEConfig.training_tokens` default, its value for "not known"."""
    from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

    fields = {f.name: f for f in dataclasses.fields(CustomSAEConfig)}
    return int(fields["training_tokens"].default)


def release_and_id(record: ResultRecord) -> tuple[str, str]:
    """(sae_release, sae_id) of a result as SAEBench names files: a published SAE's own, else ours."""
    external = record.provenance.get("external") or {}
    if external.get("sae_lens_release") and external.get("sae_lens_id"):
        return str(external["sae_lens_release"]), str(external["sae_lens_id"])
    return f"abstopk-eval_{record.model}_layer_{record.layer}", record.name


def sae_bench_class(record: ResultRecord) -> str:
    """The trainer class SAEBench's plots group this SAE under."""
    from abstopk_eval.saes.formats import activation_name

    prov = record.provenance
    activation = (prov.get("external") or {}).get("activation") or prov.get("variant")
    if not activation:
        return str((record.data.get("sae_cfg_dict") or {}).get("architecture") or "unknown")
    name = activation_name(str(activation))
    return SAE_BENCH_CLASS.get(name, name)


def _training_tokens(cfg: dict[str, Any]) -> int:
    metadata = cfg.get("metadata") or {}
    for key in ("train_tokens", "training_tokens"):
        value = metadata.get(key, cfg.get(key))
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return _unknown_training_tokens()


def to_sae_bench(record: ResultRecord) -> dict[str, Any]:
    """The SAEBench form of one result (see the module docstring)."""
    spec = SAE_BENCH_EVALS[record.eval_name]
    data = copy.deepcopy(record.data)
    release, sae_id = release_and_id(record)
    data["sae_lens_release_id"], data["sae_lens_id"] = release, sae_id
    data["eval_type_id"] = spec.eval_type_id
    metrics = data.get("eval_result_metrics") or {}
    data["eval_result_metrics"] = {key: value for key, value in metrics.items() if isinstance(value, dict)}
    cfg = dict(data.get("sae_cfg_dict") or {})
    config = data.get("eval_config") or {}
    cfg["sae_lens_architecture"] = cfg.get("architecture")
    cfg["architecture"] = sae_bench_class(record)
    cfg["training_tokens"] = _training_tokens(cfg)
    cfg.setdefault("model_name", config.get("model_name") or record.model)
    cfg.setdefault("hook_name", config.get("hook_name") or f"blocks.{record.layer}.hook_resid_post")
    cfg.setdefault("hook_layer", record.layer)
    data["sae_cfg_dict"] = cfg
    data["abstopk_eval_export"] = {
        "source": str(record.path),
        "evaluation": record.eval_name,
        "sae_bench_eval": spec.folder,
        "mapping": spec.mapping,
    }
    return data


def export_path(out_dir: Path, spec: SaeBenchEval, release: str, sae_id: str) -> Path:
    """sae_bench's own file name (`get_results_filepath`) inside eval_results/<eval type>/."""
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath

    return Path(get_results_filepath(str(Path(out_dir) / EVAL_RESULTS_DIR / spec.folder), release, sae_id))


def _misread_keyword(path: Path, spec: SaeBenchEval) -> str | None:
    """The graphing keyword that would make SAEBench read `path` as another evaluation, if any."""
    text = str(path)
    first = next((word for word in GRAPHING_KEYWORDS if word in text), None)
    return first if first is not None and first != spec.folder else None


def export_sae_bench(
    results_dir: Path,
    out_dir: Path,
    *,
    model: str | None = None,
    layer: int | None = None,
    evals: list[str] | None = None,
) -> list[Path]:
    """Write every exportable result (see the module docstring); returns the files written."""
    unknown = sorted(set(evals or []) - set(SAE_BENCH_EVALS))
    if unknown:
        raise UserError(f"no SAEBench counterpart for {', '.join(unknown)}; exportable: {', '.join(SAE_BENCH_EVALS)}")
    cli.check_output_dir(out_dir, "--sae-bench")
    if not Path(results_dir).is_dir():
        raise UserError(f"--results-dir {results_dir} is not a directory")
    chosen = evals or list(SAE_BENCH_EVALS)
    planned: dict[Path, ResultRecord] = {}
    skipped_tagged = 0
    for record in iter_results(results_dir, kind=ResultKind.SAE, model=model, layer=layer):
        if record.eval_name not in chosen:
            continue
        if record.config_tag is not None:
            skipped_tagged += 1
            continue
        spec = SAE_BENCH_EVALS[record.eval_name]
        path = export_path(out_dir, spec, *release_and_id(record))
        if path in planned:  # e.g. one published SAE evaluated on two presets' data
            raise UserError(
                f"{record.path} and {planned[path].path} would both be exported as {path.name}; export one model, "
                "layer or results dir at a time (--model / --layer / --results-dir)"
            )
        planned[path] = record
    if skipped_tagged:
        log.info("left out %d results computed with non-default --eval-option values", skipped_tagged)
    warned: set[str] = set()
    for path, record in planned.items():
        word = _misread_keyword(path, SAE_BENCH_EVALS[record.eval_name])
        if word is not None and word not in warned:
            warned.add(word)
            log.warning(
                "%s contains %r: SAEBench's graphing_utils would read it as that evaluation (it matches words in "
                "the whole path); export into a folder whose path lacks it",
                path,
                word,
            )
        atomic_write_json(path, to_sae_bench(record))
    return sorted(planned)


def build_parser() -> argparse.ArgumentParser:
    p = cli.new_parser("python -m abstopk_eval.export", __doc__)
    p.add_argument(
        "--sae-bench",
        type=Path,
        required=True,
        metavar="DIR",
        help=f"write SAEBench-layout files into DIR/{EVAL_RESULTS_DIR}/<eval type>/",
    )
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--model", default=None, help="only this model's results")
    p.add_argument("--layer", type=int, default=None, help="only this layer's results")
    p.add_argument(
        "--evals",
        nargs="+",
        default=None,
        metavar="E",
        help=f"only these evaluations (exportable: {', '.join(SAE_BENCH_EVALS)}); default all of them",
    )
    cli.add_logging_arguments(p)
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.quiet)
    written = export_sae_bench(args.results_dir, args.sae_bench, model=args.model, layer=args.layer, evals=args.evals)
    print(f"wrote {len(written)} SAEBench result files under {Path(args.sae_bench) / EVAL_RESULTS_DIR}")


if __name__ == "__main__":
    main()
