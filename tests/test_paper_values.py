"""The paper's published numbers: every cell of Tables 1 and 2, each with its source, looked up by table, model,
layer, method and metric."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from abstopk_eval.paper_values import TABLE1, TABLE2, TABLE2_COLUMNS, paper_value

# The paper's table shapes (arXiv 2510.00404):
# Table 2 (Appendix E): 8 blocks (Gemma2-2B L12/L14, Pythia-70M L3/L4, GPT2-small L6/L8, Qwen3-4B L18/L20)
#   x 3 rows (AbsTopK, TopK, JumpReLU) x 6 columns (Unlearning, Absorption, SCR, TPP, RAVEL, Sparse Probing).
# Table 1 (Section 3.3): 4 (model, layer) blocks (Qwen3-4B 18/20, Gemma2-2B 12/16) x 2 metric rows (MMLU,
#   HarmBench) x 5 columns (Original, JumpReLU SAE, TopK SAE, AbsTopK SAE, DiM).
TABLE2_BLOCKS = {
    ("gemma-2-2b", 12),
    ("gemma-2-2b", 14),
    ("pythia-70m", 3),
    ("pythia-70m", 4),
    ("gpt2", 6),
    ("gpt2", 8),
    ("qwen3-4b", 18),
    ("qwen3-4b", 20),
}
TABLE1_BLOCKS = {("qwen3-4b", 18), ("qwen3-4b", 20), ("gemma-2-2b", 12), ("gemma-2-2b", 16)}


def test_table_shapes_equal_the_papers():
    assert len(TABLE2) == 8 * 3 * 6 == 144
    assert {(v.model, v.layer) for v in TABLE2} == TABLE2_BLOCKS
    assert Counter(v.method for v in TABLE2) == {"AbsTopK": 48, "TopK": 48, "JumpReLU": 48}
    assert Counter(v.task for v in TABLE2) == {task: 24 for task, _ in TABLE2_COLUMNS}
    assert len(TABLE1) == 4 * 2 * 5 == 40
    assert {(v.model, v.layer) for v in TABLE1} == TABLE1_BLOCKS
    assert Counter(v.task for v in TABLE1) == {"mmlu": 20, "harmbench": 20}
    for table in (TABLE1, TABLE2):
        keys = [(v.model, v.layer, v.method, v.task) for v in table]
        assert len(set(keys)) == len(keys)  # one value per cell


def test_every_value_has_a_source_naming_table_row_and_column():
    for v in TABLE1 + TABLE2:
        assert v.source.startswith(f"arXiv 2510.00404 {v.table} "), v
        assert "row '" in v.source and "column '" in v.source, v
        assert isinstance(v.value, float) and (0 <= v.value <= 1 if v.table == "Table 2" else 0 <= v.value <= 100)


def test_gemma_l14_block_recorded_both_ways():
    cell = paper_value("Table 2", "gemma-2-2b", 14, "abstopk", "tpp")
    assert cell is not None and cell.value == 0.42 and cell.appendix_b_layer == 16
    assert paper_value("Table 2", "gemma-2-2b", 16, "abstopk", "tpp") is cell  # Appendix B's layer
    assert "Appendix B gives layer 16" in cell.source
    assert paper_value("Table 2", "gemma-2-2b", 12, "abstopk", "tpp").appendix_b_layer is None


def test_paper_value_lookup_maps_methods_to_our_variants():
    assert paper_value("Table 2", "qwen3-4b", 18, "abstopk", "tpp").value == 0.36
    assert paper_value("Table 2", "qwen3-4b", 18, "batchtopk", "ravel").value == 0.79
    assert paper_value("Table 2", "qwen3-4b", 20, "abstopk", "scr").value == 0.32
    assert paper_value("Table 2", "pythia-70m", 3, "jumprelu", "absorption").value == 0.50
    assert paper_value("Table 2", "gemma-3-270m", 9, "abstopk", "scr") is None
    assert paper_value("Table 2", "qwen3-4b", 18, "relu", "scr") is None
    assert paper_value("Table 1", "qwen3-4b", 18, "jumprelu", "harmbench").value == 79.1
    assert paper_value("Table 1", "gemma-2-2b", 16, "dim", "harmbench").value == 72.0
    assert paper_value("Table 1", "gemma-2-2b", 12, "original", "mmlu").value == 52.2


def _paper_text() -> Path | None:
    env = os.environ.get("ABSTOPK_PAPER_TEXT")
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "paper" / "abstopk-arxiv-2510.00404.txt" for p in (root.parent, root.parent.parent)]
    return next((p for p in candidates if p.is_file()), None)


@pytest.mark.skipif(_paper_text() is None, reason="the paper's text (../shared/paper/) is not beside this checkout")
def test_table2_cells_equal_the_papers_text():
    """Parse Table 2's rows from the paper's text and compare every cell."""
    text = _paper_text().read_text()
    table = text[text.index("Table 2:") :]
    table = table[: table.index("Figure 4:")]
    block_of = {"Gemma2-2B": "gemma-2-2b", "Pythia-70M": "pythia-70m", "GPT2-small": "gpt2", "Qwen3-4B": "qwen3-4b"}
    parsed = {}
    block = None
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("\t")]
        match = re.fullmatch(r"(\S+) L(\d+)", cells[0]) if cells and cells[0] else None
        if match:
            block = (block_of[match.group(1)], int(match.group(2)))
        if block and len(cells) == 8 and cells[1] in ("AbsTopK", "TopK", "JumpReLU"):
            for (task, _), value in zip(TABLE2_COLUMNS, cells[2:]):
                parsed[(*block, cells[1], task)] = float(value)
    assert len(parsed) == 144
    assert {(v.model, v.layer, v.method, v.task): v.value for v in TABLE2} == parsed


def test_report_marks_a_cell_shown_under_appendix_b_layer():
    from abstopk_eval.paper_report import _paper_cell

    cell = paper_value("Table 2", "gemma-2-2b", 16, "topk", "scr")
    assert _paper_cell(cell, 16) == "0.21 (table: L14)" and _paper_cell(cell, 14) == "0.21"
    assert _paper_cell(None, 16) == ""
