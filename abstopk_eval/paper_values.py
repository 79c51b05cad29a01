"""Published numbers of the AbsTopK paper, every cell of its Tables 1 and 2, as facts for the paper tables
(`abstopk_eval.paper_report`).

Paper: X. Zhu, M. M. Khalili, Z. Zhu, "AbsTopK: Rethinking Sparse Autoencoders For Bidirectional Features",
arXiv 2510.00404 (v2, Oct 2025), ICLR 2026 poster (https://arxiv.org/abs/2510.00404,
https://openreview.net/forum?id=EEs6I4cO7S).

Source: the paper's full text (`../shared/paper/abstopk-arxiv-2510.00404.txt` beside the checkout, extracted from
the arXiv paper with Tables 1 and 2 complete). Every value below is copied from it and keeps its table, row and
column in `source`:

- Table 1 (Section 3.3, "Performance comparison on MMLU and HarmBench across steering methods"): rows Qwen3-4B
  layers 18 and 20, Gemma2-2B layers 12 and 16, metrics MMLU and HarmBench; columns Original, JumpReLU SAE,
  TopK SAE, AbsTopK SAE, DiM. 4 x 2 rows x 5 columns = 40 cells (Original is printed once per model and layer).
- Table 2 (Appendix E, "Performance comparison of SAE variants across tasks on all other models and layers"):
  blocks Gemma2-2B L12 / L14, Pythia-70M L3 / L4, GPT2-small L6 / L8, Qwen3-4B L18 / L20, rows AbsTopK, TopK,
  JumpReLU; columns Unlearning, Absorption, SCR, TPP, RAVEL, Sparse Probing. 8 x 3 rows x 6 columns = 144 cells.
  Values are in the paper's convention: its Unlearning and Absorption columns are "1 - original score" (Table 2's
  caption and Appendix E.1.1-E.1.2); `abstopk_eval.columns.TABLE2_TASKS` converts ours into it.

Known inconsistency, recorded both ways: Table 2 labels a Gemma2-2B block "L14", while Appendix B (and Table 1)
give Gemma-2-2B layers 12 and 16. Those cells carry `layer=14` (the label) and `appendix_b_layer=16`; they are
shown beside our layer-16 results too, marked.

Not in the paper as numbers (left out on purpose, never estimated): Figures 2-4 (training MSE curves, normalised
MSE vs k, loss recovered vs k) and the Appendix D k sweeps, and Figure 3's bar chart of Qwen3-4B L18 (the same
numbers as Table 2's Qwen3-4B L18 block, which is recorded). The SCR / TPP threshold (top-n latents) and the sparse
probing k behind the Table 2 cells are not stated; our columns use n = 20 and k = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = (
    "Zhu, Khalili, Zhu. AbsTopK: Rethinking Sparse Autoencoders For Bidirectional Features. "
    "arXiv 2510.00404v2 (ICLR 2026)"
)

PAPER_MODELS = ("gpt2", "pythia-70m", "gemma-2-2b", "qwen3-4b")
"""Our registry keys of the paper's four models (GPT-2 small, Pythia-70M, Gemma-2-2B, Qwen3-4B)."""

METHOD_VARIANTS: dict[str, tuple[str, ...]] = {
    # The paper's code (GoXzascc/AbsTopK-SAE) trains its "TopK" as batchtopk and "AbsTopK" as batchabsolutek
    # (batch-level), so each paper method is shown beside both our per-sample and batch-level variants.
    "TopK": ("batchtopk", "topk"),
    "AbsTopK": ("batch-abstopk", "abstopk"),
    "JumpReLU": ("jumprelu",),
}
"""Paper method -> our variants its published value is shown beside."""


@dataclass(frozen=True)
class PaperValue:
    table: str
    """"Table 1" (steering) or "Table 2" (SAEBench tasks)."""
    model: str
    """Our registry key."""
    layer: int
    """The layer as the table labels it."""
    method: str
    """The paper's name: AbsTopK, TopK, JumpReLU, DiM, Original."""
    task: str
    """Table 2: unlearning, absorption, scr, tpp, ravel, sparse_probing. Table 1: mmlu, harmbench."""
    value: float
    """As printed (Table 2's Unlearning and Absorption: 1 - original score; Table 1: percent)."""
    source: str
    """Table, row and column in the paper."""
    appendix_b_layer: int | None = None
    """The layer Appendix B names for this block where the table's label differs (Gemma2-2B "L14": 16)."""

    def matches_layer(self, layer: int) -> bool:
        return layer in (self.layer, self.appendix_b_layer)


# ------------------------------------------------------------------------------------------------ Table 2

TABLE2_COLUMNS: tuple[tuple[str, str], ...] = (
    ("unlearning", "Unlearning"),
    ("absorption", "Absorption"),
    ("scr", "SCR"),
    ("tpp", "TPP"),
    ("ravel", "RAVEL"),
    ("sparse_probing", "Sparse Probing"),
)
"""(task key, the paper's column header), in the paper's column order."""

_TABLE2_ROWS: tuple[tuple[str, int, str, dict[str, tuple[float, ...]]], ...] = (
    # (model key, layer as labelled, the paper's block label, {method: the six columns in TABLE2_COLUMNS order})
    (
        "gemma-2-2b",
        12,
        "Gemma2-2B L12",
        {
            "AbsTopK": (0.93, 0.73, 0.27, 0.34, 0.73, 0.76),
            "TopK": (0.88, 0.76, 0.20, 0.29, 0.70, 0.71),
            "JumpReLU": (0.90, 0.75, 0.22, 0.30, 0.71, 0.73),
        },
    ),
    (
        "gemma-2-2b",
        14,
        "Gemma2-2B L14",
        {
            "AbsTopK": (0.91, 0.70, 0.27, 0.42, 0.71, 0.70),
            "TopK": (0.89, 0.68, 0.21, 0.36, 0.74, 0.67),
            "JumpReLU": (0.94, 0.69, 0.23, 0.39, 0.72, 0.69),
        },
    ),
    (
        "pythia-70m",
        3,
        "Pythia-70M L3",
        {
            "AbsTopK": (0.75, 0.54, 0.20, 0.22, 0.64, 0.66),
            "TopK": (0.71, 0.47, 0.15, 0.14, 0.62, 0.60),
            "JumpReLU": (0.73, 0.50, 0.17, 0.21, 0.63, 0.61),
        },
    ),
    (
        "pythia-70m",
        4,
        "Pythia-70M L4",
        {
            "AbsTopK": (0.79, 0.53, 0.21, 0.23, 0.68, 0.57),
            "TopK": (0.72, 0.50, 0.16, 0.21, 0.69, 0.61),
            "JumpReLU": (0.77, 0.51, 0.17, 0.20, 0.61, 0.62),
        },
    ),
    (
        "gpt2",
        6,
        "GPT2-small L6",
        {
            "AbsTopK": (0.74, 0.66, 0.18, 0.22, 0.60, 0.54),
            "TopK": (0.80, 0.63, 0.14, 0.19, 0.57, 0.50),
            "JumpReLU": (0.77, 0.65, 0.15, 0.20, 0.58, 0.52),
        },
    ),
    (
        "gpt2",
        8,
        "GPT2-small L8",
        {
            "AbsTopK": (0.75, 0.67, 0.23, 0.28, 0.51, 0.59),
            "TopK": (0.71, 0.67, 0.15, 0.20, 0.48, 0.55),
            "JumpReLU": (0.73, 0.67, 0.18, 0.23, 0.49, 0.57),
        },
    ),
    (
        "qwen3-4b",
        18,
        "Qwen3-4B L18",
        {
            "AbsTopK": (0.95, 0.79, 0.35, 0.36, 0.81, 0.83),
            "TopK": (0.91, 0.77, 0.26, 0.31, 0.79, 0.82),
            "JumpReLU": (0.93, 0.78, 0.28, 0.30, 0.80, 0.78),
        },
    ),
    (
        "qwen3-4b",
        20,
        "Qwen3-4B L20",
        {
            "AbsTopK": (0.95, 0.80, 0.32, 0.45, 0.85, 0.81),
            "TopK": (0.92, 0.77, 0.27, 0.36, 0.76, 0.84),
            "JumpReLU": (0.93, 0.78, 0.29, 0.39, 0.81, 0.83),
        },
    ),
)

_APPENDIX_B_LAYER = {("gemma-2-2b", 14): 16}
"""Table 2's Gemma2-2B "L14" block: Appendix B lists layers 12 and 16 (see the module docstring)."""


def _table2() -> tuple[PaperValue, ...]:
    values = []
    for model, layer, label, rows in _TABLE2_ROWS:
        alt = _APPENDIX_B_LAYER.get((model, layer))
        for method, cells in rows.items():
            for (task, header), value in zip(TABLE2_COLUMNS, cells, strict=True):
                note = f"; Appendix B gives layer {alt} for this block" if alt is not None else ""
                source = f"arXiv 2510.00404 Table 2 (Appendix E), row '{label} {method}', column '{header}'{note}"
                values.append(PaperValue("Table 2", model, layer, method, task, value, source, alt))
    return tuple(values)


# ------------------------------------------------------------------------------------------------ Table 1

TABLE1_COLUMNS: tuple[str, ...] = ("Original", "JumpReLU", "TopK", "AbsTopK", "DiM")
"""The paper's methods in Table 1's column order (its headers add " SAE" to the three SAEs)."""

_TABLE1_ROWS: tuple[tuple[str, int, str, dict[str, tuple[float, ...]]], ...] = (
    # (model key, layer, the paper's model label, {metric: the five columns in TABLE1_COLUMNS order}), percent
    ("qwen3-4b", 18, "Qwen3-4B", {"mmlu": (77.3, 75.0, 75.2, 75.9, 75.8), "harmbench": (17.0, 79.1, 78.2, 81.3, 80.6)}),
    ("qwen3-4b", 20, "Qwen3-4B", {"mmlu": (77.3, 75.7, 75.0, 76.4, 76.4), "harmbench": (17.0, 78.5, 77.0, 79.0, 80.0)}),
    (
        "gemma-2-2b",
        12,
        "Gemma2-2B",
        {"mmlu": (52.2, 48.8, 49.1, 51.3, 51.0), "harmbench": (19.0, 69.5, 69.8, 70.2, 70.8)},
    ),
    (
        "gemma-2-2b",
        16,
        "Gemma2-2B",
        {"mmlu": (52.2, 48.2, 48.5, 51.0, 50.8), "harmbench": (19.0, 69.8, 70.2, 71.7, 72.0)},
    ),
)
_METRIC_LABEL = {"mmlu": "MMLU", "harmbench": "HarmBench"}


def _table1() -> tuple[PaperValue, ...]:
    values = []
    for model, layer, label, rows in _TABLE1_ROWS:
        for task, cells in rows.items():
            for method, value in zip(TABLE1_COLUMNS, cells, strict=True):
                header = f"{method} SAE" if method in METHOD_VARIANTS else method
                source = (
                    f"arXiv 2510.00404 Table 1 (Section 3.3), row '{label} layer {layer} {_METRIC_LABEL[task]}', "
                    f"column '{header}'"
                )
                values.append(PaperValue("Table 1", model, layer, method, task, value, source))
    return tuple(values)


TABLE2: tuple[PaperValue, ...] = _table2()
TABLE1: tuple[PaperValue, ...] = _table1()
ALL_VALUES: tuple[PaperValue, ...] = TABLE2 + TABLE1


def paper_value(table: str, model: str, layer: int, variant: str, task: str) -> PaperValue | None:
    """The published value shown beside our `variant` (a registry variant name, or a Table 1 method such as
    "dim" / "original"), or None. A cell whose table label and Appendix B disagree on the layer matches both."""
    for value in TABLE2 + TABLE1:
        if (value.table, value.model, value.task) != (table, model, task) or not value.matches_layer(layer):
            continue
        if variant in METHOD_VARIANTS.get(value.method, ()) or variant == value.method.lower():
            return value
    return None
