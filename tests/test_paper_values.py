"""The paper's published numbers, looked up by table, model, layer, method and metric."""

from __future__ import annotations

from abstopk_eval.paper_values import paper_value


def test_paper_value_lookup_maps_methods_to_our_variants():
    assert paper_value("Table 2", "qwen3-4b", 18, "abstopk", "tpp").value == 0.36
    assert paper_value("Table 2", "qwen3-4b", 18, "batchtopk", "ravel").value == 0.79
    assert paper_value("Table 2", "qwen3-4b", 20, "abstopk", "scr") is None
    assert paper_value("Table 2", "gemma-3-270m", 9, "abstopk", "scr") is None
    assert paper_value("Table 1", "qwen3-4b", 18, "jumprelu", "harmbench").value == 79.1
