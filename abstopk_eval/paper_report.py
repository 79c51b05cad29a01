"""The paper's tables and figure data, regenerated from results/ (`python -m abstopk_eval.report --paper`).

For every model and layer with results, writes under reports/paper/:

- ``<model>_layer<L>_table2.{md,csv,tex}``: the paper's Table 2 tasks (Unlearning, 1 - Absorption, SCR, TPP,
  RAVEL, sparse probing top-1), one row per (variant, k), mean +- 95% t-interval over seeds, with the paper's
  published value beside ours where `abstopk_eval.paper_values` records one for that model, layer and method;
  each column's convention is stated and ours is converted to the paper's (`columns.PaperTask.to_paper`: its
  Unlearning and Absorption are 1 - sae_bench's score), with ours as sae_bench reports it beside;
- ``<model>_layer<L>_fig2_training_mse.{md,csv,tex,png}``: training MSE curves (Figure 2; the CSV holds every
  logged point, the tables the final value);
- ``<model>_layer<L>_fig3_nmse_vs_l0.{md,csv,tex,png}`` and ``..._fig4_loss_recovered_vs_l0...``: normalised MSE and
  loss recovered against k (Figures 3 and 4 and the Appendix D sweeps);
- ``table1.*``: the steering table (Table 1), from ``abstopk_eval.evals.steering.table.render_table1`` when that
  module exists (skipped with a note otherwise), and ``table1_published.*``: the paper's Table 1 in its layout;
- ``paper_values.md``: every published number recorded in the project, with its source;
- ``index.md``: links to all of it, with data sources, model, preset, seeds and package versions, proxies marked.

`index_lines(results_dir, reports_dir)` returns the same index section for reports/index.md.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from abstopk_eval.columns import FIGURE_METRICS, TABLE2_TASKS, Convention
from abstopk_eval.intervals import seed_interval
from abstopk_eval.io import atomic_write_bytes
from abstopk_eval.paper_values import (
    ALL_VALUES,
    METHOD_VARIANTS,
    PAPER,
    PAPER_MODELS,
    TABLE1,
    TABLE1_COLUMNS,
    PaperValue,
    paper_value,
)
from abstopk_eval.results import ResultKind, ResultRecord, iter_results, seed_group, table_groups

log = logging.getLogger("abstopk_eval.paper_report")

PAPER_DIR = "paper"


# ------------------------------------------------------------------------------------------------ loading


def sae_frame(group: list[ResultRecord]) -> pd.DataFrame:
    """One row per SAE of one (model, layer): identity, Table 2 metrics, core metrics and the training curve."""
    by_sae: dict[str, dict[str, dict[str, Any]]] = {}
    for r in group:
        if r.kind is ResultKind.SAE and r.config_tag is None:
            by_sae.setdefault(r.name, {})[r.eval_name] = r.data
    rows = []
    for sae, evals in sorted(by_sae.items()):
        prov = next((d.get("provenance") or {} for d in evals.values() if d.get("provenance")), {})
        row: dict[str, Any] = {
            "sae": sae,
            "variant": prov.get("variant") or sae.split("_")[0],
            "k": prov.get("k"),
            "seed": prov.get("seed"),
            "preset": prov.get("preset"),
            "corpus": prov.get("corpus"),
            "group": seed_group(evals),
        }
        for task in TABLE2_TASKS:
            row[task.label] = task.column.value(evals.get(task.eval))
        for col in FIGURE_METRICS:
            row[col.name] = col.value(evals.get(col.eval))
        row["curve"] = ((evals.get("core") or {}).get("eval_result_unstructured") or {}).get("training_curve") or []
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean and 95% t-interval half-width over seeds per identity group (`results.seed_group`), in (variant, k)
    order."""
    rows = []
    keyed = frame.assign(_k=frame["k"].map(lambda v: -1 if v is None or pd.isna(v) else int(v)))
    keyed = keyed.sort_values(["variant", "_k", "group"], kind="stable")
    for _, g in keyed.groupby("group", sort=False):
        variant, k = g["variant"].iloc[0], int(g["_k"].iloc[0])
        row: dict[str, Any] = {"variant": variant, "k": None if k == -1 else k, "seeds": len(g)}
        for col in columns:
            interval = seed_interval(pd.to_numeric(g[col], errors="coerce"))
            row[col], row[f"{col} ci95"] = interval.mean, interval.half_width
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ formatting


def _cell(value: Any, ci: Any = None, fmt: str = "{:.3f}", pm: str = " ± ") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = fmt.format(value)
    if ci is not None and not (isinstance(ci, float) and math.isnan(ci)):
        text += pm + fmt.format(ci)
    return text


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(a, b)
    return text


def _write_table(
    out_dir: Path, stem: str, shown: pd.DataFrame, numeric: pd.DataFrame, title: str, notes: list[str]
) -> list[Path]:
    """`shown` (strings) as markdown and LaTeX, `numeric` as CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = "\n".join([f"# {title}", "", shown.to_markdown(index=False, disable_numparse=True), "", *notes]) + "\n"
    tex_frame = shown.rename(columns=_tex_escape).map(lambda v: _tex_escape(str(v)))
    tex = tex_frame.to_latex(index=False, escape=False, caption=_tex_escape(title), label=f"tab:{stem}")
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.tex"]
    atomic_write_bytes(paths[0], md.encode())
    atomic_write_bytes(paths[1], numeric.to_csv(index=False).encode())
    atomic_write_bytes(paths[2], tex.encode())
    return paths


def _k_text(k: Any) -> str:
    return "" if k is None or (isinstance(k, float) and math.isnan(k)) else str(int(k))


# ------------------------------------------------------------------------------------------------ tables


def table2(frame: pd.DataFrame, model: str, layer: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(shown, numeric, number of paper cells) for Table 2 of one model and layer.

    Per task: `<label>` is ours in the paper's convention (`PaperTask.to_paper`), `<label> (sae_bench)` ours as
    sae_bench reports it where the two differ, `<label> (paper)` the published value."""
    tasks = list(TABLE2_TASKS)  # all six, empty where an evaluation has no result yet
    summary = summarise(frame, [t.label for t in tasks])
    shown = summary[["variant", "k", "seeds"]].copy()
    shown["k"] = shown["k"].map(_k_text)
    shown["seeds"] = shown["seeds"].map(str)
    numeric = summary[["variant", "k", "seeds"]].copy()
    n_paper = 0
    for task in tasks:
        ours, ci = summary[task.label], summary[f"{task.label} ci95"]
        converted = ours.map(task.to_paper)
        shown[task.label] = [_cell(v, c) for v, c in zip(converted, ci)]
        numeric[task.label] = converted
        numeric[f"{task.label} ci95"] = ci
        if task.convention is not Convention.AS_SAE_BENCH:
            shown[f"{task.label} (sae_bench)"] = [_cell(v, c) for v, c in zip(ours, ci)]
            numeric[f"{task.label} (sae_bench)"] = ours
        published = [paper_value("Table 2", model, layer, v, task.paper_task) for v in summary["variant"]]
        if any(published):
            shown[f"{task.label} (paper)"] = [_paper_cell(p, layer) for p in published]
            numeric[f"{task.label} (paper)"] = [p.value if p else None for p in published]
            n_paper += sum(p is not None for p in published)
    return shown, numeric, n_paper


def _paper_cell(value: PaperValue | None, layer: int) -> str:
    """A published value; marked when the table labels its block with another layer (Gemma2-2B "L14")."""
    if value is None:
        return ""
    return _cell(value.value, fmt="{:.2f}") + ("" if value.layer == layer else f" (table: L{value.layer})")


SWEEP_TRAINING = "training k"
SWEEP_INFERENCE = "inference k"
_POINT_METRICS = {
    "L0": "l0",
    "nMSE": "nmse",
    "nMSE per token": "nmse_per_token_mean",
    "loss recovered": "loss_recovered",
}
"""Figure 3 / 4 columns -> the field of a core result's `inference_k_sweep` entry."""


def figure_points(frame: pd.DataFrame, records: list[ResultRecord]) -> pd.DataFrame:
    """The points of Figures 3 and 4, each labelled by its sweep: every SAE at its trained k (default core
    results; tagged ones scored with `core.inference=batch` as a second series), and every `inference_k_sweep`
    entry of a core result (one trained SAE at several inference k)."""
    cols = ["sae", "variant", "k", "seed", "group"]
    base = frame.set_index("sae")[cols[1:]] if not frame.empty else pd.DataFrame(columns=cols[1:])
    rows: list[dict[str, Any]] = []
    if not frame.empty and "L0" in frame:
        for _, r in frame[frame["L0"].notna()].iterrows():
            rows.append(
                {**{c: r[c] for c in cols}, "sweep": SWEEP_TRAINING, "inference k": None}
                | {m: r[m] for m in _POINT_METRICS}
            )
    for rec in records:
        if rec.kind is not ResultKind.SAE or rec.eval_name != "core" or rec.name not in base.index:
            continue
        meta = {"sae": rec.name, **base.loc[rec.name].to_dict()}
        unstructured = rec.data.get("eval_result_unstructured") or {}
        batch = (unstructured.get("inference") or {}).get("option") == "batch"
        suffix = ", batch inference" if batch else ""
        if rec.config_tag is not None and batch and "batch" in str(unstructured["inference"].get("rule")):
            metrics = rec.data.get("eval_result_metrics") or {}
            values = {col.name: col.value(rec.data) for col in FIGURE_METRICS}
            if values.get("L0") is not None and metrics:
                rows.append({**meta, "sweep": SWEEP_TRAINING + suffix, "inference k": None, **values})
        for point in unstructured.get("inference_k_sweep") or []:
            rows.append(
                {**meta, "sweep": SWEEP_INFERENCE + suffix, "inference k": point.get("inference_k")}
                | {m: point.get(f) for m, f in _POINT_METRICS.items()}
            )
    points = pd.DataFrame(rows, columns=[*cols, "sweep", "inference k", *_POINT_METRICS])
    return points.drop_duplicates(subset=["sae", "sweep", "inference k"], keep="first")


def summarise_points(points: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`summarise` per (sweep, trained SAE group, inference k), labelled, in (sweep, variant, k, L0) order."""
    parts = []
    inference_k = points["inference k"].map(lambda v: -1 if v is None or pd.isna(v) else int(v))
    keyed = points.assign(group=points["group"].astype(str) + "|" + points["sweep"] + "|" + inference_k.astype(str))
    for (sweep, ik), g in keyed.groupby([keyed["sweep"], inference_k], sort=False):
        summary = summarise(g, columns)
        summary.insert(0, "sweep", sweep)
        summary.insert(3, "inference k", None if ik == -1 else ik)
        parts.append(summary)
    out = pd.concat(parts, ignore_index=True)
    out["_trained"] = out["k"].map(_k_text)
    out["_later"] = ~out["sweep"].str.startswith(SWEEP_TRAINING)
    out["_k"] = out["k"].map(lambda v: -1 if v is None or pd.isna(v) else int(v))
    out = out.sort_values(["_later", "sweep", "variant", "_k", "L0"], kind="stable")
    return out.drop(columns=["_later", "_k"]).reset_index(drop=True)


def _curve_frame(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        for point in r["curve"]:
            rows.append(
                {
                    "sae": r["sae"],
                    "variant": r["variant"],
                    "k": r["k"],
                    "seed": r["seed"],
                    "step": point.get("step"),
                    "tokens": point.get("tokens"),
                    "mse": point.get("mse"),
                    "fvu": point.get("fvu"),
                    "l0": point.get("l0"),
                }
            )
    return pd.DataFrame(rows, columns=["sae", "variant", "k", "seed", "step", "tokens", "mse", "fvu", "l0"])


def _plot(path: Path, draw) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


FIGURE_NOTE = (
    "The paper gives Figures 2-4 only as plots, so there is no published number to show beside ours "
    "(see `abstopk_eval/paper_values.py`)."
)


def figures(
    frame: pd.DataFrame, out_dir: Path, stem: str, label: str, records: list[ResultRecord] | None = None
) -> list[Path]:
    """Figures 2-4 data and plots; `records` (the layer's results) add the inference-time sweeps of
    `figure_points`."""
    written: list[Path] = []
    curves = _curve_frame(frame)
    if not curves.empty:
        final = curves.sort_values("step").groupby("sae").tail(1)
        final_frame = frame[["sae", "variant", "k", "seed", "group"]].merge(final[["sae", "mse"]], on="sae")
        summary = summarise(final_frame.rename(columns={"mse": "final training MSE"}), ["final training MSE"])
        shown = summary[["variant", "k", "seeds"]].assign(k=summary["k"].map(_k_text), seeds=summary["seeds"].map(str))
        shown["final training MSE"] = [
            _cell(v, c, "{:.4g}") for v, c in zip(summary["final training MSE"], summary["final training MSE ci95"])
        ]
        name = f"{stem}_fig2_training_mse"
        paths = _write_table(
            out_dir,
            name,
            shown,
            curves,
            f"Figure 2 data: training MSE, {label}",
            [
                "Per-dimension training MSE on the (normalised) training batches; the CSV holds every "
                "logged point of every SAE.",
                "",
                FIGURE_NOTE,
            ],
        )

        def draw_curves(ax):
            for sae, g in curves.groupby("sae"):
                ax.plot(g["tokens"], g["mse"], label=sae)
            ax.set_xlabel("training tokens")
            ax.set_ylabel("training MSE")
            ax.set_yscale("log")
            ax.set_title(f"Training MSE ({label})")
            ax.legend(fontsize=6)

        written += [*paths, _plot(out_dir / f"{name}.png", draw_curves)]
    points = figure_points(frame, records or [])
    for number, metric, slug in ((3, "nMSE", "nmse_vs_l0"), (4, "loss recovered", "loss_recovered_vs_l0")):
        if points.empty or points[metric].isna().all():
            continue
        extra = ["nMSE per token"] if metric == "nMSE" and points["nMSE per token"].notna().any() else []
        summary = summarise_points(points, ["L0", metric, *extra])
        shown = summary[["sweep", "variant", "k", "inference k", "seeds"]].assign(
            k=summary["k"].map(_k_text), seeds=summary["seeds"].map(str)
        )
        shown["inference k"] = summary["inference k"].map(_k_text)
        for col, fmt in (("L0", "{:.1f}"), (metric, "{:.4f}"), *((e, "{:.4f}") for e in extra)):
            shown[f"measured {col}" if col == "L0" else col] = [
                _cell(v, c, fmt) for v, c in zip(summary[col], summary[f"{col} ci95"])
            ]
        name = f"{stem}_fig{number}_{slug}"
        numeric = summary[
            ["sweep", "variant", "k", "inference k", "seeds", "L0", "L0 ci95", metric, f"{metric} ci95", *extra]
        ]
        note = (
            "nMSE = sum||x - x_hat||^2 / sum||x||^2 on held-out raw residuals (ratio of sums); `nMSE per token` is "
            "the mean over tokens of ||x - x_hat||^2 / ||x||^2, the average the paper's code reports."
            if metric == "nMSE"
            else "Loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean) on held-out text, CE_zero with every "
            "position zeroed (sae_bench's convention)."
        )
        written += _write_table(
            out_dir,
            name,
            shown,
            numeric,
            f"Figure {number} data: {metric} vs measured L0, {label}",
            [
                note,
                "x is the measured L0 (mean active latents per token, z != 0) on held-out activations, not the "
                "nominal k: batch-level and penalty-based SAEs do not hold exactly k latents at inference.",
                f"`sweep`: {SWEEP_TRAINING!r} = one SAE trained per k (k: trained k); {SWEEP_INFERENCE!r} = one "
                "trained SAE (k) scored at each `inference k` with its weights unchanged (`--eval-option "
                "core.inference_k=[...]`, the paper code's sweep); `, batch inference` = batch-level SAEs with the "
                "paper code's batch top-(k*B) selection at inference (`core.inference=batch`) instead of their "
                "calibrated threshold.",
                "",
                FIGURE_NOTE,
            ],
        )

        def draw_l0(ax, summary=summary, metric=metric, number=number):
            for (sweep, variant, k), g in summary.groupby(["sweep", "variant", "_trained"], sort=False):
                inference = sweep.startswith(SWEEP_INFERENCE)
                ax.errorbar(
                    g["L0"],
                    g[metric],
                    xerr=g["L0 ci95"].fillna(0),
                    yerr=g[f"{metric} ci95"].fillna(0),
                    marker="s" if inference else "o",
                    linestyle="--" if inference else "-",
                    label=f"{variant} ({sweep}{f', trained k={k}' if inference else ''})",
                    capsize=2,
                )
            ax.set_xlabel("measured L0 (active latents per token)")
            ax.set_ylabel(metric)
            ax.set_title(f"Figure {number}: {metric} vs L0 ({label})")
            ax.legend(fontsize=6)

        written.append(_plot(out_dir / f"{name}.png", draw_l0))
    return written


def _table1(results_dir: Path, out_dir: Path) -> tuple[list[Path], str]:
    """Table 1 from the steering evaluation's renderer, if it exists; (written files, note)."""
    from abstopk_eval.errors import UserError

    try:
        from abstopk_eval.evals.steering.table import render_table1
    except (ImportError, AttributeError):
        return [], "Table 1 (steering) skipped: `abstopk_eval.evals.steering.table.render_table1` is not available."
    try:
        rendered = render_table1(results_dir)
    except UserError as err:
        return [], f"Table 1 (steering) skipped: {err}"
    if rendered is None:
        return [], "Table 1 (steering) skipped: no steering results yet."
    if isinstance(rendered, tuple):  # render_table1 gives (markdown, data frame)
        items = [("table1", rendered[0]), ("table1_data", rendered[1])]
    else:
        items = rendered.items() if isinstance(rendered, dict) else [("table1", rendered)]
    written: list[Path] = []
    for key, item in items:
        stem = key if str(key).startswith("table1") else f"table1_{key}"
        if item is None:
            continue
        if isinstance(item, pd.DataFrame):
            shown = item.astype(object).where(item.notna(), "").astype(str)
            written += _write_table(
                out_dir,
                stem,
                shown,
                item,
                "Table 1: steering (safety vs ability)",
                [
                    "Rendered by `abstopk_eval.evals.steering.table.render_table1`.",
                    "Published values: see paper_values.md.",
                ],
            )
        elif isinstance(item, (str, bytes)):
            text = item.decode() if isinstance(item, bytes) else item
            path = out_dir / f"{stem}.md"
            atomic_write_bytes(path, (text.rstrip() + "\n").encode())
            written.append(path)
        elif isinstance(item, (Path, list, tuple)):
            written += [Path(p) for p in ([item] if isinstance(item, Path) else item)]
    if not written:
        return [], "Table 1 (steering): the renderer returned nothing (no steering results yet?)."
    return written, ""


def table1_published(out_dir: Path) -> list[Path]:
    """The paper's Table 1 in its own layout (percent), written beside ours (`table1.*`), so a reader compares
    the same (model, layer, metric) rows: ours are rates in [0, 1], the paper's are percent."""
    rows = []
    for model, layer in dict.fromkeys((v.model, v.layer) for v in TABLE1):
        for task, label in (("mmlu", "MMLU"), ("harmbench", "HarmBench")):
            row: dict[str, Any] = {"model": model, "layer": layer, "metric": f"{label} (%)"}
            for method in TABLE1_COLUMNS:
                cell = paper_value("Table 1", model, layer, method.lower(), task)
                row[method] = cell.value if cell else None
            rows.append(row)
    numeric = pd.DataFrame(rows)
    shown = numeric.astype(object).map(lambda v: "" if v is None else f"{v:g}" if isinstance(v, float) else str(v))
    return _write_table(
        out_dir,
        "table1_published",
        shown,
        numeric,
        "Table 1 as published (arXiv 2510.00404, Section 3.3): MMLU and HarmBench, percent",
        [
            "Every cell of the paper's Table 1 (`abstopk_eval/paper_values.py`, sources in paper_values.md); our "
            "steering results for the same model and layer are in table1.md (rates in [0, 1], not percent).",
        ],
    )


def paper_values_markdown() -> str:
    lines = [
        "# Published values recorded in this project",
        "",
        f"Paper: {PAPER}.",
        "",
        "Recorded in `abstopk_eval/paper_values.py` (whose docstring lists what could not be sourced). Each value "
        "is shown beside our variants: "
        + "; ".join(f"paper {m} -> {', '.join(v)}" for m, v in METHOD_VARIANTS.items())
        + ".",
        "",
        "| table | model | layer | method | task | value | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in ALL_VALUES:
        lines.append(f"| {v.table} | {v.model} | {v.layer} | {v.method} | {v.task} | {v.value:g} | {v.source} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ index


def _sae_results(results_dir: Path) -> list[ResultRecord]:
    """The current SAE results (Table 1 reads the baselines itself); those marked stale_config ran under an older
    convention and are never averaged with current ones (as in `report.build_reports`)."""
    return [r for r in iter_results(results_dir, kind=ResultKind.SAE) if not r.marked_stale]


def _facts(group: list[ResultRecord]) -> list[str]:
    """Data sources, model, preset, seeds and versions of one (model, layer), proxies marked."""
    model = group[0].model
    core = [r.data for r in group if r.eval_name == "core"]
    prov = next((d.get("provenance") or {} for d in core), None) or next((r.provenance for r in group), {})
    lines = []
    proxy_model = model not in PAPER_MODELS
    lines.append(
        f"- Model: `{model}` ({prov.get('model_hf_id', '?')}); weights: {prov.get('model_source', '?')}"
        + (
            " — **PROXY**: a small offline stand-in; the paper uses GPT-2 small, Pythia-70M, Gemma-2-2B, Qwen3-4B"
            if proxy_model
            else ""
        )
    )
    presets = sorted({str(r.provenance.get("preset")) for r in group if r.provenance.get("preset")})
    lines.append(
        f"- Preset(s): {', '.join(presets) or 'n/a'}"
        + ("" if presets == ["paper"] else " — **PROXY** training budget (the paper's is `paper`: 30k steps x 4096)")
    )
    seeds: dict[str, set] = {}
    for r in group:
        seeds.setdefault(str(r.provenance.get("variant") or r.name.split("_")[0]), set()).add(r.provenance.get("seed"))
    lines.append(
        "- Seeds: "
        + "; ".join(f"{v}: {', '.join(str(s) for s in sorted(x, key=str))}" for v, x in sorted(seeds.items()))
    )
    corpus = prov.get("corpus")
    if corpus:
        lines.append(
            f"- Training / held-out text: `{corpus}`"
            + (
                ""
                if corpus == "pile"
                else " — **PROXY**: offline text instead of the paper's monology/pile-uncopyrighted"
            )
        )
    by_eval: dict[str, dict[str, Any]] = {}
    for r in group:
        by_eval.setdefault(r.eval_name, r.data)
    for name, data in sorted(by_eval.items()):
        cfg = data.get("eval_config") or {}
        cards = data.get("dataset_cards") or []
        source = cfg.get("dataset_source")
        if cards:
            what = "; ".join(f"{c.get('name')} ({c.get('source', '?')})" for c in cards)
        else:
            what = (
                "; ".join(f"{k}: {v}" for k, v in cfg.items() if "dataset" in k and v not in (None, "", []))
                or "see the result's eval_config"
            )
        proxy = "" if source == "sae_bench" else " — **PROXY** of the paper's SAEBench data" if name != "core" else ""
        lines.append(f"- `{name}` data: {what}{proxy}")
    external = sorted({r.name for r in group if r.provenance.get("source_path")})
    if external:
        lines.append(f"- External checkpoints (`abstopk_eval.compare`): {', '.join(external)}")
    versions = prov.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def _files_of(stem: str, stems: list[str], folder: Path) -> list[Path]:
    """The report files of one table in `folder`: named `<stem>.*` or `<stem>_*`, and not of a table whose stem
    extends it (`m_layer9_reference_*` is not quick's `m_layer9`)."""
    longer = [other for other in stems if other != stem and other.startswith(stem)]
    return sorted(
        p
        for p in folder.glob(f"{stem}*")
        if p.is_file()
        and (p.name.startswith(f"{stem}.") or p.name.startswith(f"{stem}_"))
        and not any(p.name.startswith(f"{other}.") or p.name.startswith(f"{other}_") for other in longer)
    )


def index_lines(results_dir: Path, reports_dir: Path) -> list[str]:
    """The reports/index.md section linking every table and figure, with data sources, model, preset, seeds and
    package versions per (model, layer), proxies marked. Paths are relative to `reports_dir`."""
    reports_dir = Path(reports_dir)
    results = _sae_results(results_dir)
    lines = ["## Tables and figures", ""]
    if not results:
        return lines + ["No results yet: run `python -m abstopk_eval.run`.", ""]
    groups = table_groups(results)
    stems = [table.stem for table in groups]
    for table, group in groups.items():
        lines += [f"### {table.title}", "", *_facts(group), ""]
        files = _files_of(table.stem, stems, reports_dir) + _files_of(table.stem, stems, reports_dir / PAPER_DIR)
        for path in files:
            lines.append(f"- [{path.relative_to(reports_dir).as_posix()}]({path.relative_to(reports_dir).as_posix()})")
        lines.append("")
    paper_dir = reports_dir / PAPER_DIR
    extra = (
        sorted(
            p
            for p in paper_dir.glob("*")
            if p.is_file() and not any(p.name.startswith(f"{stem}_") for stem in stems) and p.name != "index.md"
        )
        if paper_dir.is_dir()
        else []
    )
    if extra:
        lines += (
            ["### Paper-wide", ""]
            + [f"- [{p.relative_to(reports_dir).as_posix()}]({p.relative_to(reports_dir).as_posix()})" for p in extra]
            + [""]
        )
    others = sorted(
        p
        for p in reports_dir.glob("*")
        if p.is_file() and p.name != "index.md" and not any(p.name.startswith(stem) for stem in stems)
    )
    if others:
        lines += ["### Other reports", ""] + [f"- [{p.name}]({p.name})" for p in others] + [""]
    return lines


# ------------------------------------------------------------------------------------------------ entry point


def build_paper_report(results_dir: Path, reports_dir: Path) -> list[Path]:
    """Write reports/paper/ (Tables 1-2, Figures 2-4 data and plots, paper_values.md, index.md); return the paths."""
    out_dir = Path(reports_dir) / PAPER_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _sae_results(results_dir)
    written: list[Path] = []
    notes: list[str] = []
    for table, group in table_groups(results).items():
        frame = sae_frame(group)
        model, layer, stem, label = table.model, table.layer, table.stem, table.title
        shown, numeric, n_paper = table2(frame, model, layer)
        has_values = any(numeric[c].notna().any() for c in numeric.columns if c not in ("variant", "k", "seeds"))
        table_notes = [
            "Mean over seeds ± half-width of a 95% t-interval (two or more seeds). `(paper)` columns: the published "
            "value of arXiv 2510.00404 Table 2 for the same model, layer and method (paper TopK beside our batchtopk "
            "and topk, paper AbsTopK beside batch-abstopk and abstopk), with its source in paper_values.md.",
            f"{n_paper} published cell(s) apply here."
            if n_paper
            else "No published Table 2 value is recorded for this model and layer (see paper_values.md).",
            "Conventions per column (`abstopk_eval.columns.TABLE2_TASKS`):",
            *[f"- {task.convention_note}" for task in TABLE2_TASKS],
            "",
            "Our datasets are offline proxies of SAEBench's unless a result's eval_config says "
            "dataset_source=sae_bench; "
            "absolute numbers are comparable between our SAEs, not with the paper's.",
        ]
        if not has_values:
            table_notes.append("None of the six Table 2 evaluations has results for this model and layer yet.")
        written += _write_table(
            out_dir, f"{stem}_table2", shown, numeric, f"Table 2: SAEBench tasks, {label}", table_notes
        )
        written += figures(frame, out_dir, stem, label, group)
    table1_paths, note = _table1(Path(results_dir), out_dir)
    written += table1_paths
    written += table1_published(out_dir)
    if note:
        notes.append(note)
        log.info(note)
    values = out_dir / "paper_values.md"
    atomic_write_bytes(values, paper_values_markdown().encode())
    written.append(values)
    index = [
        "# Paper tables and figures (arXiv 2510.00404)",
        "",
        "Generated by `python -m abstopk_eval.report --paper` from results/.",
        "",
        *[f"- {n}" for n in notes],
        "",
        *_relative(index_lines(results_dir, reports_dir), PAPER_DIR),
    ]
    atomic_write_bytes(out_dir / "index.md", ("\n".join(index) + "\n").encode())
    written.append(out_dir / "index.md")
    log.info("wrote %d paper report files to %s (Table 1 values recorded: %d)", len(written), out_dir, len(TABLE1))
    return written


def _relative(lines: list[str], subdir: str) -> list[str]:
    """Re-point index links (relative to reports/) from inside reports/<subdir>/."""
    out = []
    for line in lines:
        if line.startswith("- [") and "](" in line:
            target = line[line.index("](") + 2 : -1]
            new = target[len(subdir) + 1 :] if target.startswith(f"{subdir}/") else f"../{target}"
            line = line[: line.index("](") + 2] + new + ")"
        out.append(line)
    return out
