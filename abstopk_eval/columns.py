"""Every metric the reports show, defined once: where it lives in a result, how it is printed, which direction
is better, its bootstrap interval's name, and the paper's Table 2 columns built on the same metrics.

`abstopk_eval.report` (per-layer tables) and `abstopk_eval.paper_report` (the paper's tables) both read these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class Column:
    """One report column: a metric of one evaluation's `eval_result_metrics`."""

    name: str
    eval: str
    path: tuple[str, str]
    """(category, metric) inside eval_result_metrics."""
    fmt: str
    higher_is_better: bool | None = None
    """Direction for bolding the best variant; None: never bold (descriptive columns such as L0)."""
    bootstrap: str | None = None
    """Name of the metric's 95% bootstrap interval over evaluation examples (`interval`), shown when the metric
    comes from a single seed."""

    def value(self, result: Mapping[str, Any] | None) -> float | None:
        """This metric in one result's data (None where absent)."""
        value = ((result or {}).get("eval_result_metrics") or {}).get(self.path[0], {}).get(self.path[1])
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def interval(self, result: Mapping[str, Any] | None) -> tuple[float, float] | None:
        """This metric's 95% bootstrap interval in one result: core keeps `<name>_low/_high` in its
        `bootstrap_ci95` metric category, evaluations on sae_bench's fixed metric schemas keep `{name: [low,
        high]}` in eval_result_unstructured (`evals.bootstrap.INTERVALS_KEY`)."""
        if not self.bootstrap or not result:
            return None
        typed = (result.get("eval_result_metrics") or {}).get("bootstrap_ci95") or {}
        if f"{self.bootstrap}_low" in typed:
            return float(typed[f"{self.bootstrap}_low"]), float(typed[f"{self.bootstrap}_high"])
        loose = (result.get("eval_result_unstructured") or {}).get("bootstrap_ci95") or {}
        return (float(loose[self.bootstrap][0]), float(loose[self.bootstrap][1])) if self.bootstrap in loose else None


COLUMNS: tuple[Column, ...] = (
    Column("nMSE", "core", ("normalised_reconstruction", "nmse"), "{:.4f}", False, "nmse"),
    Column(
        "nMSE per token",
        "core",
        ("normalised_reconstruction", "nmse_per_token_mean"),
        "{:.4f}",
        False,
        "nmse_per_token_mean",
    ),
    Column("FVU", "core", ("normalised_reconstruction", "fvu"), "{:.3f}", False, "fvu"),
    Column("loss recovered", "core", ("normalised_reconstruction", "loss_recovered"), "{:.3f}", True, "loss_recovered"),
    Column(
        "CE with SAE",
        "core",
        ("model_performance_preservation", "ce_loss_with_sae"),
        "{:.3f}",
        False,
        "ce_loss_with_sae",
    ),
    Column("KL", "core", ("model_behavior_preservation", "kl_div_with_sae"), "{:.3f}", False, "kl_div_with_sae"),
    Column("L0", "core", ("sparsity", "l0"), "{:.1f}"),  # measured (z != 0): bold only within 5% of it
    Column("dead frac", "core", ("sparsity", "dead_fraction"), "{:.3f}"),
    Column("negative frac", "core", ("sparsity", "frac_negative"), "{:.3f}"),
    # the paper's Table 2 (SAEBench tasks); offline proxies of sae_bench's datasets, see each result's dataset cards
    Column(
        "sparse probing top-1",
        "sparse_probing",
        ("sae", "sae_top_1_test_accuracy"),
        "{:.3f}",
        True,
        "sae_top_1_test_accuracy",
    ),
    Column("SCR@20", "scr", ("scr_metrics", "scr_metric_threshold_20"), "{:.3f}", True, "scr_metric_threshold_20"),
    Column(
        "TPP@20",
        "tpp",
        ("tpp_metrics", "tpp_threshold_20_total_metric"),
        "{:.3f}",
        True,
        "tpp_threshold_20_total_metric",
    ),
    Column("1 - absorption", "absorption", ("mean", "one_minus_absorption"), "{:.3f}", True, "one_minus_absorption"),
    Column("RAVEL", "ravel", ("ravel", "disentanglement_score"), "{:.3f}", True, "disentanglement_score"),
    Column("RAVEL base acc", "ravel", ("knowledge", "base_accuracy"), "{:.2f}"),
    Column("unlearning", "unlearning", ("unlearning", "unlearning_score"), "{:.3f}", True, "unlearning_score"),
    Column("unlearning forget base acc", "unlearning", ("knowledge", "forget_base_accuracy"), "{:.2f}"),
    # bidirectional features (issue 7; measured per issue 16 item 3). Never bolded: a non-negative latent cannot
    # take opposite signs, so its bidirectional share is 0 by construction and a "winner" would say nothing.
    Column(
        "bidirectional share",
        "bidirectional",
        ("bidirectional", "bidirectional_share"),
        "{:.3f}",
        None,
        "bidirectional_share",
    ),
    Column("bidirectional control", "bidirectional", ("bidirectional", "control_share"), "{:.3f}"),
    Column("axes in one signed latent", "bidirectional", ("bidirectional", "frac_axes_bidirectional"), "{:.2f}"),
    Column("axis-duplicate pairs", "fragmentation", ("antiparallel", "n_axis_duplicate_pairs"), "{:.0f}", False),
    Column(
        "alive latents sharing an axis",
        "fragmentation",
        ("antiparallel", "frac_alive_in_axis_duplicate_pair"),
        "{:.3f}",
    ),
)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
L0 = "L0"
"""The measured-sparsity column: a value is compared (and bolded) only against SAEs whose L0 is within
`L0_TOLERANCE` of its own."""
L0_TOLERANCE = 0.05

TRAIN_SECONDS = "train s"
"""The per-layer table's training-time column (from core's eval_result_unstructured, not a metric)."""
FORMATS: dict[str, str] = {c.name: c.fmt for c in COLUMNS} | {TRAIN_SECONDS: "{:.0f}"}
"""Every per-layer table column with a number, in display order, and its format."""


class Convention(Enum):
    """How a Table 2 column of the paper relates to the sae_bench metric we store."""

    AS_SAE_BENCH = "as sae_bench"
    """The paper prints sae_bench's score itself."""
    ONE_MINUS = "1 - sae_bench score"
    """The paper prints 1 - sae_bench's score (its Table 2 caption and Appendix E.1.1-E.1.2: Unlearning and
    Absorption "have been transformed as 1 - original score")."""


ABSORPTION_FRACTION = Column(
    "absorption fraction", "absorption", ("mean", "mean_absorption_fraction_score"), "{:.3f}", False
)
"""sae_bench's original absorption score (lower is better); the paper prints 1 - it."""


@dataclass(frozen=True)
class PaperTask:
    """One column of the paper's Table 2: our metric in sae_bench's convention (`column`: sae_bench's field, with
    sae_bench's meaning), the task key of its published values (`abstopk_eval.paper_values`), and the convention
    the paper prints it in. The one place where ours and the paper's are converted into each other."""

    label: str
    column: Column
    paper_task: str
    convention: Convention
    paper_header: str
    """The paper's own column header."""

    @property
    def eval(self) -> str:
        return self.column.eval

    @property
    def path(self) -> tuple[str, str]:
        return self.column.path

    @property
    def sae_bench_field(self) -> str:
        return f"{self.column.eval}.{self.column.path[1]}"

    def to_paper(self, value: float | None) -> float | None:
        """Our (sae_bench-convention) value in the paper's convention."""
        if value is None or value != value:  # None or NaN
            return value
        return 1.0 - value if self.convention is Convention.ONE_MINUS else value

    def from_paper(self, value: float | None) -> float | None:
        """A published value in sae_bench's convention (both conventions are their own inverse)."""
        return self.to_paper(value)

    @property
    def convention_note(self) -> str:
        """The column's convention, as the report states it."""
        ours = f"sae_bench's `{self.sae_bench_field}`"
        if self.convention is Convention.ONE_MINUS:
            return (
                f"{self.label}: the paper's '{self.paper_header}' column is 1 - {ours} (its Table 2 caption, Appendix "
                f"E); `{self.label}` shows ours converted to that, `{self.label} (sae_bench)` ours as sae_bench "
                "reports it."
            )
        return f"{self.label}: the paper's '{self.paper_header}' column and ours are both {ours}."


TABLE2_TASKS: tuple[PaperTask, ...] = (
    PaperTask("Unlearning", BY_NAME["unlearning"], "unlearning", Convention.ONE_MINUS, "Unlearning"),
    PaperTask("Absorption", ABSORPTION_FRACTION, "absorption", Convention.ONE_MINUS, "Absorption"),
    PaperTask("SCR@20", BY_NAME["SCR@20"], "scr", Convention.AS_SAE_BENCH, "SCR"),
    PaperTask("TPP@20", BY_NAME["TPP@20"], "tpp", Convention.AS_SAE_BENCH, "TPP"),
    PaperTask("RAVEL", BY_NAME["RAVEL"], "ravel", Convention.AS_SAE_BENCH, "RAVEL"),
    PaperTask(
        "Sparse probing top-1",
        BY_NAME["sparse probing top-1"],
        "sparse_probing",
        Convention.AS_SAE_BENCH,
        "Sparse Probing",
    ),
)
"""In the paper's order."""

FIGURE_METRICS: tuple[Column, ...] = (
    BY_NAME["nMSE"],
    BY_NAME["nMSE per token"],
    BY_NAME["loss recovered"],
    BY_NAME[L0],
)
"""The core metrics of the paper's Figures 3 and 4, plotted against the measured L0 (not the nominal k)."""
