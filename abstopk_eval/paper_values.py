"""Published numbers of the AbsTopK paper, as facts for the paper tables (`abstopk_eval.paper_report`).

Paper: X. Zhu, M. M. Khalili, Z. Zhu, "AbsTopK: Rethinking Sparse Autoencoders For Bidirectional Features",
arXiv 2510.00404 (v2, Oct 2025), ICLR 2026 poster (https://arxiv.org/abs/2510.00404,
https://openreview.net/forum?id=EEs6I4cO7S).

How these were found (this project's search tool over stored public text; no network access to arXiv): the
arXiv HTML page (https://arxiv.org/html/2510.00404v2) is stored only up to its introduction, so the tables could
not be read from the paper itself. The values below are the ones quoted, with their table, model, layer and
method, by a public paper-reading note (a markdown summary of the full paper and appendices, found in the search
tool's code corpus, index file id 55688362293; its repository is not named by the index). They are therefore a
secondary source: check them against the PDF before citing. Each value keeps its own `source` line.

Not sourced (left out on purpose, never estimated):
- Table 2 (SAEBench: Unlearning, Absorption, SCR, TPP, RAVEL, Sparse Probing) for every (model, layer, method)
  other than the cells below: GPT-2 small L6/L8, Pythia-70M L3/L4, Gemma-2-2B L12/L14 (the note says Table 2 lists
  Gemma layers 12 and 14 although Appendix B names 12 and 16), Qwen3-4B L20, and the remaining cells of
  Qwen3-4B L18 (Unlearning, Absorption, Sparse Probing).
- Table 1 (steering: MMLU and HarmBench) apart from the cells below; in particular every Gemma-2-2B cell and
  every DiM value except Qwen3-4B L20 HarmBench.
- Figures 2-4 (training MSE curves, normalised MSE vs k, loss recovered vs k) and the Appendix D k sweeps: the
  paper gives these only as plots (the note: "Exact curves are in figures, not tabulated"), so no number exists.
- The SCR / TPP threshold (top-n latents) behind the Table 2 cells is not stated in the quoted text; our
  columns use n = 20.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = (
    "Zhu, Khalili, Zhu. AbsTopK: Rethinking Sparse Autoencoders For Bidirectional Features. "
    "arXiv 2510.00404v2 (ICLR 2026)"
)
_VIA_NOTE = (
    "as quoted by a public paper-reading note of arXiv 2510.00404 (search index file id 55688362293); "
    "secondary source, not checked against the PDF"
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
    method: str
    """The paper's name: AbsTopK, TopK, JumpReLU, DiM, Original."""
    task: str
    """Table 2: unlearning, absorption, scr, tpp, ravel, sparse_probing. Table 1: mmlu, harmbench."""
    value: float
    source: str


def _t2(model: str, layer: int, method: str, task: str, value: float) -> PaperValue:
    return PaperValue(
        "Table 2",
        model,
        layer,
        method,
        task,
        value,
        f"arXiv 2510.00404 Table 2 ({model} L{layer}, {method}, {task}), {_VIA_NOTE}",
    )


def _t1(model: str, layer: int, method: str, task: str, value: float) -> PaperValue:
    return PaperValue(
        "Table 1",
        model,
        layer,
        method,
        task,
        value,
        f"arXiv 2510.00404 Table 1 ({model} L{layer}, {method}, {task}), {_VIA_NOTE}",
    )


TABLE2: tuple[PaperValue, ...] = (
    _t2("qwen3-4b", 18, "AbsTopK", "scr", 0.35),
    _t2("qwen3-4b", 18, "TopK", "scr", 0.26),
    _t2("qwen3-4b", 18, "JumpReLU", "scr", 0.28),
    _t2("qwen3-4b", 18, "AbsTopK", "tpp", 0.36),
    _t2("qwen3-4b", 18, "TopK", "tpp", 0.31),
    _t2("qwen3-4b", 18, "JumpReLU", "tpp", 0.30),
    _t2("qwen3-4b", 18, "AbsTopK", "ravel", 0.81),
    _t2("qwen3-4b", 18, "TopK", "ravel", 0.79),
    _t2("qwen3-4b", 18, "JumpReLU", "ravel", 0.80),
    _t2("pythia-70m", 4, "AbsTopK", "sparse_probing", 0.57),
    _t2("pythia-70m", 4, "TopK", "sparse_probing", 0.61),
    _t2("gpt2", 6, "AbsTopK", "unlearning", 0.74),
    _t2("gpt2", 6, "TopK", "unlearning", 0.80),
)

TABLE1: tuple[PaperValue, ...] = (
    _t1("qwen3-4b", 18, "AbsTopK", "mmlu", 75.9),
    _t1("qwen3-4b", 18, "TopK", "mmlu", 75.2),
    _t1("qwen3-4b", 18, "JumpReLU", "mmlu", 75.0),
    _t1("qwen3-4b", 18, "Original", "mmlu", 77.3),
    _t1("qwen3-4b", 18, "AbsTopK", "harmbench", 81.3),
    _t1("qwen3-4b", 18, "TopK", "harmbench", 78.2),
    _t1("qwen3-4b", 18, "JumpReLU", "harmbench", 79.1),
    _t1("qwen3-4b", 20, "AbsTopK", "harmbench", 79.0),
    _t1("qwen3-4b", 20, "DiM", "harmbench", 80.0),
)

ALL_VALUES: tuple[PaperValue, ...] = TABLE2 + TABLE1


def paper_value(table: str, model: str, layer: int, variant: str, task: str) -> PaperValue | None:
    """The published value shown beside our `variant` (a registry variant name), or None."""
    for value in TABLE2 + TABLE1:
        if (value.table, value.model, value.layer, value.task) == (
            table,
            model,
            layer,
            task,
        ) and variant in METHOD_VARIANTS.get(value.method, ()):
            return value
    return None
