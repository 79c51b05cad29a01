"""`python -m abstopk_eval.report`: rebuild reports/ from results/ alone.

Per (model, layer): a markdown and a CSV table (rows = trained SAEs, columns = metrics), training-curve
figure, and the nMSE / loss-recovered vs k figure when a k sweep exists. reports/index.md links them all.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from abstopk_eval.columns import BY_NAME, COLUMNS, FORMATS, L0, L0_TOLERANCE, TRAIN_SECONDS, Column
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.options import data_source_of
from abstopk_eval.intervals import seed_interval
from abstopk_eval.io import atomic_write_bytes
from abstopk_eval.paired import NOTES as PAIRED_NOTES
from abstopk_eval.paired import SaeResults, paired_table
from abstopk_eval.paper_report import build_paper_report, index_lines
from abstopk_eval.results import ResultKind, ResultRecord, iter_results, seed_group, table_groups

log = logging.getLogger("abstopk_eval.report")


def _sae_row(sae: str, evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    core = evals.get("core", {})
    first = core or next(iter(evals.values()), {})
    prov = first.get("provenance", {})
    row: dict[str, Any] = {
        "sae": sae,
        "variant": prov.get("variant", sae.split("_")[0]),
        "k": prov.get("k"),
        "seed": prov.get("seed"),
        "preset": prov.get("preset"),
        "corpus": prov.get("corpus"),
        "group": seed_group(evals),
    }
    for col in COLUMNS:
        data = evals.get(col.eval, {})
        row[col.name] = col.value(data)
        interval = col.interval(data)
        if interval is not None:
            row[f"{col.name} boot low"], row[f"{col.name} boot high"] = interval
    unstructured = core.get("eval_result_unstructured") or {}
    row[TRAIN_SECONDS] = unstructured.get("train_seconds")
    return row


DATA_MARK = "\u2020"
"""Marks a cell measured on canonical (hub) data: `--datasets canonical` or an evaluation's dataset_source."""


def _data_source(r: ResultRecord) -> str | None:
    return data_source_of(r.identity.get("options")) if r.config_tag else "offline"


def data_column(eval_name: str) -> str:
    """The per-SAE table's column saying which data `eval_name`'s cells used ('offline' / 'canonical')."""
    return f"data {eval_name}"


def _current_by_sae(
    results: list[ResultRecord], datasets: str = "offline"
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, str]]]:
    """Per SAE, its result data per evaluation under each evaluation's default config (or with
    `datasets='canonical'` its canonical-data result where there is one), and which data each used."""
    by_sae: dict[str, dict[str, dict[str, Any]]] = {}
    sources: dict[str, dict[str, str]] = {}
    for r in sorted(results, key=lambda r: _data_source(r) == datasets):  # the wanted source last: it wins
        source = _data_source(r)
        if r.kind is ResultKind.SAE and source in ("offline", datasets):
            by_sae.setdefault(r.name, {})[r.eval_name] = r.data
            sources.setdefault(r.name, {})[r.eval_name] = source
    return by_sae, sources


def layer_table(results: list[ResultRecord], datasets: str = "offline") -> pd.DataFrame:
    """One row per SAE of one (model, layer) (the per-SAE CSV), from results under each evaluation's default
    config, or with `datasets='canonical'` its canonical-data result where there is one (the `data <eval>`
    columns say which); baselines are not SAEs (steering's are in Table 1), results under other options are
    listed apart."""
    by_sae, sources = _current_by_sae(results, datasets)
    rows = [
        _sae_row(sae, evals) | {data_column(e): src for e, src in sources[sae].items()}
        for sae, evals in sorted(by_sae.items())
    ]
    frame = pd.DataFrame(rows)
    return frame.sort_values(["variant", "k", "seed"], na_position="first", key=lambda s: s.astype(str)).reset_index(
        drop=True
    )


def sae_results(results: list[ResultRecord]) -> list[SaeResults]:
    """The SAEs of one table with their current offline results, for `paired.paired_table`."""
    by_sae, _ = _current_by_sae(results)
    out = []
    for sae, evals in sorted(by_sae.items()):
        row = _sae_row(sae, evals)
        k, seed = row["k"], row["seed"]
        out.append(
            SaeResults(str(row["variant"]), None if k is None else int(k), None if seed is None else int(seed), evals)
        )
    return out


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per identity group (the same SAE but for its seed, on the same evaluation data): the mean over seeds
    of every numeric column and a 95% interval `<col> low` / `<col> high` with its kind in `<col> interval`: a
    t-interval over seeds with two or more seeds, else the metric's bootstrap interval over held-out examples where
    the evaluation gives one."""
    metrics = [c for c in FORMATS if c in frame]
    rows = []
    for _, group in frame.groupby("group", sort=False):
        first = group.iloc[0]
        k = first["k"]
        row: dict[str, Any] = {
            "variant": first["variant"],
            "k": None if k is None or pd.isna(k) else k,
            "preset": first.get("preset"),
            "corpus": first.get("corpus"),
            "seeds": len(group),
        }
        for data_col in (c for c in group.columns if c.startswith("data ")):
            row[data_col] = "/".join(sorted({str(v) for v in group[data_col].dropna()}))
        for col in metrics:
            values = pd.to_numeric(group[col], errors="coerce").dropna()
            interval = seed_interval(values)
            row[col], row[f"{col} low"], row[f"{col} high"], row[f"{col} interval"] = interval.mean, None, None, None
            row[f"{col} n"] = interval.n
            if interval.half_width is not None:
                row[f"{col} low"], row[f"{col} high"], row[f"{col} interval"] = interval.low, interval.high, "t"
            elif (
                len(values) == 1
                and f"{col} boot low" in group
                and pd.notna(group.at[values.index[0], f"{col} boot low"])
            ):
                only = values.index[0]  # the one SAE (seed) this metric was measured on
                row[f"{col} low"], row[f"{col} high"] = (
                    float(group.at[only, f"{col} boot low"]),
                    float(group.at[only, f"{col} boot high"]),
                )
                row[f"{col} interval"] = "bootstrap"
        rows.append(row)
    return pd.DataFrame(rows)


def _leaders(summary: pd.DataFrame, col: Column) -> set[int]:
    """Rows whose lead on `col` is beyond both 95% intervals among the SAEs at matched sparsity: a row is compared
    only with rows whose measured L0 is within `L0_TOLERANCE` of its own, and is bold when it is the best of them
    and its worse bound beats the runner-up's better bound. Rows without L0 or intervals are never bold; SAEs at
    other sparsities are never beaten or beaten by it."""
    if col.higher_is_better is None or col.name not in summary or L0 not in summary:
        return set()
    values = pd.to_numeric(summary[col.name], errors="coerce")
    l0 = pd.to_numeric(summary[L0], errors="coerce")
    low, high = (pd.to_numeric(summary[f"{col.name} {end}"], errors="coerce") for end in ("low", "high"))
    bold = set()
    for row in values.dropna().index:
        if pd.isna(l0[row]):
            continue
        band = values[(abs(l0 - l0[row]) <= L0_TOLERANCE * l0[row]) & values.notna()]
        ranked = band.sort_values(ascending=not col.higher_is_better)
        if len(ranked) < 2 or ranked.index[0] != row:
            continue
        second = ranked.index[1]
        if any(pd.isna(v) for v in (low[row], high[row], low[second], high[second])):
            continue
        if low[row] > high[second] if col.higher_is_better else high[row] < low[second]:
            bold.add(int(row))
    return bold


def _cell(value: Any, low: Any, high: Any, kind: Any, n: Any, seeds: int, fmt: str) -> str:
    if value is None or pd.isna(value):
        return ""
    text = fmt.format(value)
    if kind == "t":
        text = f"{text} ± {fmt.format((high - low) / 2)}"
    elif kind == "bootstrap":
        text = f"{text} [{fmt.format(low)}, {fmt.format(high)}]"
    if n < seeds:  # the evaluation ran on fewer seeds than were trained: say so, the mean is not over all seeds
        text += f" (n={n})"
    return text


def _markdown(summary: pd.DataFrame) -> str:
    """Mean ± 95% t-interval over seeds (or value [bootstrap interval] with one seed); a value is bold only when
    its lead is beyond the intervals. An SAE with no current value in any column (e.g. all its results stale) has
    no row."""
    metrics = [c for c in FORMATS if c in summary]
    summary = summary[summary[metrics].notna().any(axis=1)].reset_index(drop=True) if metrics else summary
    shown = summary[["variant", "k", "preset", "corpus", "seeds"]].copy()
    shown["k"] = shown["k"].map(lambda v: "" if v is None or pd.isna(v) else str(int(v)))
    leaders = {c.name: _leaders(summary, c) for c in COLUMNS}
    for col, fmt in FORMATS.items():
        if col not in summary or summary[col].isna().all():
            continue
        cells = [
            _cell(*values, fmt)
            for values in zip(
                *(summary[f"{col}{end}"] for end in ("", " low", " high", " interval", " n")), summary["seeds"]
            )
        ]
        canonical = summary.get(data_column(BY_NAME[col].eval)) if col in BY_NAME else None
        if canonical is not None:
            cells = [f"{t}{DATA_MARK}" if t and "canonical" in str(c) else t for t, c in zip(cells, canonical)]
        shown[col] = [f"**{text}**" if text and i in leaders.get(col, set()) else text for i, text in enumerate(cells)]
    return shown.to_markdown(index=False, disable_numparse=True)


def _other_options_lines(results: list[ResultRecord]) -> list[str]:
    """Results computed under non-default evaluation options: listed with their options, never in the table."""
    tagged = sorted(
        (r for r in results if r.kind is ResultKind.SAE and _data_source(r) is None),
        key=lambda r: (r.eval_name, r.name),
    )
    if not tagged:
        return []
    lines = ["", "Results under non-default evaluation options (not in the table above):", ""]
    for r in tagged:
        options = ", ".join(f"{k}={v}" for k, v in sorted((r.identity.get("options") or {}).items()))
        lines.append(f"- `{r.name}` {r.eval_name} ({options or r.config_tag}): `{r.path.name}`")
    return lines


def _provenance_lines(results: list[ResultRecord]) -> list[str]:
    core = next((r.data for r in results if r.eval_name == "core"), None)
    if core is None:
        return []
    prov = core.get("provenance", {})
    held = prov.get("heldout_corpus", {})
    cfg = core.get("eval_config", {})
    train = [r.data for r in results if r.eval_name == "core"]
    tokens = sorted({(d.get("eval_result_unstructured") or {}).get("train_tokens") for d in train} - {None})
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    perf = core.get("eval_result_metrics", {}).get("model_performance_preservation", {})
    training_paths = sorted(
        {(d.get("sae_cfg_dict") or {}).get("metadata", {}).get("training_path") for d in train} - {None}
    )
    return [
        f"- Model: `{prov.get('model')}` ({prov.get('model_hf_id')}); weights: {prov.get('model_source')}",
        f"- Layer {prov.get('layer')} (`{prov.get('hook_name')}`), preset `{prov.get('preset')}`",
        f"- Training text: corpus `{prov.get('corpus')}`, {', '.join(map(str, tokens))} training tokens per SAE "
        "(offline substitute for the paper's Pile)",
        f"- Held-out text: {cfg.get('dataset')}; {held.get('n_tokens')} tokens; CE/KL on {cfg.get('n_ce_tokens')} "
        f"predicted tokens, reconstruction/sparsity on {cfg.get('n_sparsity_tokens')} activations (BOS excluded)",
        f"- Reference losses on those tokens: clean model {perf.get('ce_loss_without_sae', float('nan')):.3f} "
        "nats/token, "
        f"layer output zero-ablated at every position (sae_bench) {perf.get('ce_loss_with_ablation', float('nan')):.3f}"
        + _bos_kept(core),
        *([f"- Training path: {', '.join(training_paths)}"] if training_paths else []),
        f"- Versions: {versions}",
    ]


def _bos_kept(core: dict) -> str:
    kept = (core.get("eval_result_metrics", {}).get("normalised_reconstruction") or {}).get(
        "ce_loss_with_ablation_bos_kept"
    )
    return "" if kept is None else f", special positions kept {kept:.3f}"


NOTES = """\
Cells are the mean over seeds ± the half-width of a 95% t-interval when there are two or more seeds. With one
seed, a cell shows [a 95% bootstrap interval] over held-out sequences (CE, KL, loss recovered), sequence-long
blocks of activations (nMSE, FVU) or each task's units (test texts for sparse probing, SCR and TPP; questions for
unlearning; entities for RAVEL; words for absorption), where the result keeps one: evaluation-data noise only,
not training-seed noise. A value is
bold only when its lead over the runner-up is beyond both intervals. "(n=1)" marks a metric measured on fewer
seeds than were trained (costly evaluations ran on seed 0 only). Per-SAE values (every seed) are in the CSV next
to this file.

Task notes: sparse probing, SCR, TPP use offline labelled data (data cards in docs/data_cards), proxies for
sae_bench's hub datasets (results on the canonical data, `--datasets canonical`, are in their own table below);
SCR on amazon-vs-movie x sentiment stays small for every SAE (the biased probe follows
the domain label, which is spread over many latents). SCR and TPP probes use sae_bench's recipe (AdamW + L1). RAVEL and
unlearning show the model's base accuracy beside the score; unlearning's forget set is country capitals
(the MMLU biology/medicine proxy is near chance on this model), not WMDP-bio.

Metric notes: nMSE = sum||x - x_hat||^2 / sum||x||^2 on raw residuals (small on this model because the mean
residual carries most of the norm; FVU, which centres x, is the informative one). L0 and the dead fraction count
a latent as active when z != 0, so negative AbsTopK activations count. Loss recovered = (CE_zero - CE_sae) /
(CE_zero - CE_clean), splicing the reconstruction at every non-BOS position, CE_zero with the layer output zeroed
at every position, BOS included (sae_bench's convention; the result's `loss_recovered_bos_kept` keeps the
special positions). `unlearning` is sae_bench's `unlearning_score` and the absorption fraction sae_bench's score;
the paper prints 1 - each (its Table 2, Appendix E; reports/paper/ shows both). Dead fraction = latents never
active on the held-out activations; with the short `quick` budget it stays high for the batch-level and
penalty-based variants. Batch-level SAEs' inference threshold is calibrated to L0 = k on training activations
(`--eval-option core.inference=batch` scores them with batch top-(k*B) selection instead).
"""


def _figures(frame: pd.DataFrame, results: list[ResultRecord], out_dir: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    curves = {
        r.name: (r.data.get("eval_result_unstructured") or {}).get("training_curve")
        for r in results
        if r.eval_name == "core"
    }
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for sae, curve in sorted(curves.items()):
            ax.plot([c["tokens"] for c in curve], [c["fvu"] for c in curve], label=sae)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training FVU (normalised MSE)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title("Training curves")
        name = f"{stem}_training_curves.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        made.append(name)
    sweep = frame.dropna(subset=["k"])
    if not sweep.empty and sweep.groupby("variant")["k"].nunique().max() > 1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for variant, group in sweep.groupby("variant"):
            g = group.groupby("k")[["nMSE", "FVU", "loss recovered"]].mean().sort_index()
            axes[0].plot(g.index, g["FVU"], marker="o", label=variant)
            axes[1].plot(g.index, g["loss recovered"], marker="o", label=variant)
        axes[0].set_xlabel("k")
        axes[0].set_ylabel("FVU")
        axes[1].set_xlabel("k")
        axes[1].set_ylabel("loss recovered")
        axes[0].legend()
        fig.tight_layout()
        name = f"{stem}_k_sweep.png"
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        made.append(name)
    from abstopk_eval.bidirectional_figures import bidirectional_figure, fragmentation_histogram

    made += [
        name
        for name in (bidirectional_figure(results, out_dir, stem), fragmentation_histogram(results, out_dir, stem))
        if name
    ]
    return made


def build_reports(results_dir: Path, reports_dir: Path) -> list[Path]:
    """Write one table (md + csv) per (model, layer), its figures, and reports/index.md; return the written paths."""
    everything = list(iter_results(results_dir, kind=ResultKind.SAE))
    # a result written under an older version's evaluation config (marked stale_config) is never averaged with
    # current ones: its convention may differ (e.g. core's zero-ablation); `abstopk_eval.verify` lists them
    results = [r for r in everything if not r.marked_stale]
    left_out = Counter(r.table for r in everything if r.marked_stale)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    written, index = (
        [],
        ["# abstopk-eval reports", "", "Generated by `python -m abstopk_eval.report` from `results/`.", ""],
    )
    groups = table_groups(results)
    for table, group in groups.items():
        stem = table.stem
        frame = layer_table(group)
        paired = paired_table(sae_results(group))
        figures = _figures(frame, group, reports_dir, stem)
        lines = [
            f"# {table.title}",
            "",
            *_provenance_lines(group),
            *(
                [
                    f"- Left out: {left_out[table]} result(s) written under an older evaluation config "
                    "(`stale_config`; listed by `python -m abstopk_eval.verify results`), rerun them to include them"
                ]
                if left_out[table]
                else []
            ),
            "",
            _markdown(seed_summary(frame)),
            "",
            NOTES,
        ]
        if not paired.empty:
            lines += [
                "",
                "## Paired comparisons",
                "",
                paired.to_markdown(index=False, disable_numparse=True),
                "",
                PAIRED_NOTES,
            ]
            atomic_write_bytes(reports_dir / f"{stem}_paired.csv", paired.to_csv(index=False).encode())
            written.append(reports_dir / f"{stem}_paired.csv")
        if any(_data_source(r) == "canonical" for r in group):
            canonical = layer_table(group, datasets="canonical")
            lines += [
                "",
                f"## Canonical data (`--datasets canonical`): {DATA_MARK} marks a cell measured on SAEBench's hub "
                "data (sparse probing / SCR / TPP: sae_bench's datasets; unlearning: WMDP-bio; RAVEL: RAVEL's own "
                "prompts; core: the Pile held-out split); unmarked cells are the offline results above. Each "
                "result's `eval_config.dataset_source` says which data it used.",
                "",
                _markdown(seed_summary(canonical)),
            ]
            atomic_write_bytes(reports_dir / f"{stem}_canonical.csv", canonical.to_csv(index=False).encode())
            written.append(reports_dir / f"{stem}_canonical.csv")
        lines += _other_options_lines(group)
        lines += [f"![{name}]({name})" for name in figures]
        atomic_write_bytes(reports_dir / f"{stem}.md", ("\n".join(lines) + "\n").encode())
        atomic_write_bytes(reports_dir / f"{stem}.csv", frame.to_csv(index=False).encode())
        written += [reports_dir / f"{stem}.md", reports_dir / f"{stem}.csv", *(reports_dir / f for f in figures)]
        index.append(f"- [{table.title}]({stem}.md) ({len(frame)} SAEs; [csv]({stem}.csv))")
    if not groups:
        index.append("No results yet: run `python -m abstopk_eval.run`.")
    index += ["", *index_lines(results_dir, reports_dir)]  # every table / figure in reports/ with its sources
    atomic_write_bytes(reports_dir / "index.md", ("\n".join(index) + "\n").encode())
    log.info("wrote %d report files to %s", len(written) + 1, reports_dir)
    return written


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m abstopk_eval.report", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument(
        "--paper",
        action="store_true",
        help="also write the paper's Tables 1-2 and Figures 2-4 data beside its published values (reports/paper/)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.results_dir.is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist")
    if args.paper:  # first, so the index written by build_reports can link the paper files
        for path in build_paper_report(args.results_dir, args.reports_dir):
            print(path)
    for path in build_reports(args.results_dir, args.reports_dir):
        print(path)


if __name__ == "__main__":
    main()
