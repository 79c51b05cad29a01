"""The main job end to end on a tiny random model of every architecture family, given as `--model <folder>`.

Qwen3, Gemma-2, Gemma-3, GPT-2, GPT-NeoX (Pythia) and Llama, each saved locally with a tokenizer of its family's
kind (BOS / BOS = EOS / none): the smoke preset trains TopK and AbsTopK SAEs, then core and sparse probing run.
Each run checks that the model's spec came from its config, and the sequence-start rule where it shows: the
packed rows, the activation cache (rows = non-special positions), and the run identity. One family goes through
the command line (`python -m abstopk_eval.run`), the others call its `main` in-process (faster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from abstopk_eval import run
from abstopk_eval.data.corpus import build_token_sequences
from abstopk_eval.models.registry import MODEL_REGISTRY
from abstopk_eval.models.sequence_start import sequence_start_of
from tests.helpers.models import FAMILY_START, TINY_BUILDERS
from tests.helpers.runs import sae_folder, tiny_run_argv

REPO_ROOT = Path(__file__).resolve().parents[1]
VIA_CLI = "neox"
"""The family that runs as `python -m abstopk_eval.run` in a subprocess."""
RULE_KIND = {"bos": "bos", "eos": "bos_eq_eos", "none": "none"}


@pytest.mark.parametrize("family", list(TINY_BUILDERS))
def test_a_tiny_model_of_each_family_runs_end_to_end(family, tiny_model_dirs, tmp_path):
    folder = tiny_model_dirs[family]
    argv = tiny_run_argv(folder, tmp_path)
    if family == VIA_CLI:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "abstopk_eval.run", *argv],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        run.main(argv)

    # results for both SAEs and both evaluations, under the folder's name (local-gpt2: gpt2 is a registry key),
    # layer = the middle one (3 layers -> 1)
    key = f"local-{family}" if family in MODEL_REGISTRY else family
    for sae_id in ("topk_k3_s0_smoke", "abstopk_k3_s0_smoke"):  # k = d_model 32 // 10
        results = sae_folder(tmp_path / "results", key, 1, sae_id)
        core = json.loads((results / "core.json").read_text())
        assert core["eval_result_metrics"]["sparsity"]["l0"] > 0
        assert core["provenance"]["model"] == key and "(--model)" in core["provenance"]["model_source"]
        (probing_file,) = results.glob("sparse_probing@*.json")  # non-default options: their own result file
        probing = json.loads(probing_file.read_text())
        accuracies = probing["eval_result_metrics"]["sae"]
        assert 0.0 <= accuracies["sae_top_1_test_accuracy"] <= 1.0
        identity = json.loads((results / "identity.json").read_text())
        model_identity = identity["sae"]["model"]
        assert model_identity["key"] == key and model_identity["weights"].startswith("local:")
        # tokenizers without BOS changed rule, so their identity says so; the others keep their old identity
        assert model_identity.get("sequence_start") == ("none" if FAMILY_START[family] == "none" else None)

    # the sequence-start rule in the packed rows and the activation cache
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    rule = sequence_start_of(tokenizer)
    assert rule.kind == RULE_KIND[FAMILY_START[family]]
    packed = build_token_sequences("wiki-en", tokenizer, 128, "train", 2048).tokens
    if rule.start_token_id is None:
        assert not (packed[:, 0] == tokenizer.eos_token_id).all()  # nothing prepended (the old rule put EOS here)
    else:
        assert (packed[:, 0] == rule.start_token_id).all()
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "activations").rglob("meta.json")]
    train = [m for m in metas if m["key"]["split"] == "train"]
    assert len(train) == 1 and train[0]["sequence_start"] == rule.record()
    assert train[0]["shape"][0] == int((~rule.special_mask(packed)).sum())
