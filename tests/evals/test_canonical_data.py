"""Canonical data (`--datasets canonical` / dataset_source), offline: the one mapping and its precedence, the
result identity, the up-front hub check, and RAVEL, unlearning and core run end to end on local files in their
datasets' hub formats (see `tests.helpers.knowledge` for the facts the tiny model knows)."""

from __future__ import annotations

import pytest

from abstopk_eval import run
from abstopk_eval.data import canonical, facts
from abstopk_eval.errors import UserError
from abstopk_eval.evals.core.eval_config import CoreEvalConfig
from abstopk_eval.evals.core.main import run_core
from abstopk_eval.evals.options import config_identity, data_source_of, hub_needs, with_datasets
from abstopk_eval.evals.ravel.main import run_ravel
from abstopk_eval.evals.unlearning.eval_config import SAE_BENCH_RETAIN_SUBJECTS, UnlearningEvalConfig
from abstopk_eval.evals.unlearning.main import run_unlearning
from tests.helpers.hf_datasets import populate_datasets_cache, write_local_copy
from tests.helpers.knowledge import LAYER, knowledge_context, metrics_and_details, tiny_ravel_config
from tests.helpers.saes import random_sae


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No hub; an empty `datasets` cache in offline mode; local copies go to tmp_path / 'copies'."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv(canonical.LOCAL_DIR_ENV, str(tmp_path / "copies"))
    return tmp_path


def test_datasets_flag_maps_once_and_eval_options_win():
    evals = ["core", "sparse_probing", "scr", "tpp", "ravel", "unlearning", "absorption"]
    assert with_datasets("offline", evals, {}) == {}
    options = with_datasets("canonical", evals, {"ravel": {"dataset_source": "offline"}})
    assert options["core"] == {"dataset_source": "pile"} and options["unlearning"] == {"dataset_source": "sae_bench"}
    assert options["ravel"] == {"dataset_source": "offline"}  # the explicit --eval-option wins
    assert "LabHC/bias_in_bios_class_set1" in options["sparse_probing"]["dataset_names"]
    assert len(options["sparse_probing"]["dataset_names"]) == 8 and options["scr"] == {"dataset_source": "sae_bench"}
    assert "absorption" not in options and "steering" not in with_datasets("canonical", ["steering"], {})
    assert set(with_datasets("canonical", ["core"], {})) == {"core"}  # only the evaluations that run
    assert data_source_of(options["tpp"]) == data_source_of(options["core"]) == "canonical"
    assert data_source_of({}) == "offline" and data_source_of({"dataset_source": "pile", "n_bootstrap": 200}) is None
    with pytest.raises(UserError, match="unknown --datasets"):
        with_datasets("somewhere", evals, {})


@pytest.mark.parametrize("name, source", [("core", "pile"), ("ravel", "sae_bench"), ("unlearning", "sae_bench")])
def test_data_source_is_part_of_the_result_identity(name, source):
    default = config_identity(name)
    assert "dataset_source" not in default  # added later: at its default it leaves committed identities unchanged
    assert config_identity(name, {"dataset_source": source})["dataset_source"] == source
    assert config_identity(name, {"dataset_source": "offline"}) == default
    with pytest.raises(UserError, match="unknown .*dataset_source"):
        config_identity(name, {"dataset_source": "elsewhere"})


def test_unreachable_hub_is_one_error_line_before_any_work(offline, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--datasets", "canonical", "--evals", "core", "ravel", "--no-report"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: ")
        and "\n" not in err
        and "hub is not reachable from here, and this run needs it for" in err
    )
    assert "core.dataset_source=pile" in err and "ravel.dataset_source=sae_bench" in err
    assert hub_needs(["core", "ravel"], {}) == []  # offline data needs nothing


def test_ravel_on_ravels_own_files_scores_as_the_same_data_offline(knowledge_model, knowledge_facts, offline):
    data = facts.load_entities("tiny_things")
    files = {
        "ravel_tiny_things_entity_attributes.json": data.values,
        "ravel_tiny_things_attribute_to_prompts.json": {a: [t.text for t in ts] for a, ts in data.templates.items()},
        "ravel_tiny_things_prompt_to_split.json": {t.text: "train" for ts in data.templates.values() for t in ts},
        "ravel_tiny_things_entity_to_split.json": dict.fromkeys(data.values, "train"),
    }
    assert tiny_ravel_config(dataset_source="sae_bench").needs_hub() == [
        f"ravel.dataset_source=sae_bench ({canonical.RAVEL_REPO})"
    ]
    write_local_copy(offline / "copies", canonical.RAVEL_REPO, None, files)
    assert tiny_ravel_config(dataset_source="sae_bench").needs_hub() == []
    ctx, sae = knowledge_context(knowledge_model), random_sae("abstopk", seed=1)
    hub = run_ravel(ctx, {"s": sae}, tiny_ravel_config(dataset_source="sae_bench"))["s"]
    local = run_ravel(ctx, {"s": sae}, tiny_ravel_config())["s"]
    assert metrics_and_details(hub) == metrics_and_details(local)
    assert canonical.RAVEL_REPO in hub.eval_result_unstructured["datasets"]["tiny_things"]["data_source"]
    assert hub.eval_config.dataset_source == "sae_bench"


def _mcq(i: int, subject: str) -> dict:
    return {"question": f"{subject} question {i}?", "choices": ["one", "two", "three", "four"], "answer": i % 4}


def test_unlearning_on_wmdp_bio_through_load_dataset_from_a_populated_cache(knowledge_model, offline):
    cache = offline / "hf_datasets"
    cfg = UnlearningEvalConfig(
        model_name="tiny",
        layer=LAYER,
        dataset_source="sae_bench",
        mmlu_max_questions=24,
        min_forget_facts=1,
        max_forget_facts=16,
        retain_thresholds=[0.5],
        n_features_list=[3],
        multipliers=[1.0],
        n_retain_tokens=512,
        llm_batch_size=16,
    )
    assert cfg.needs_hub()[0].startswith("unlearning.dataset_source=sae_bench (cais/wmdp wmdp-bio")
    populate_datasets_cache(cache, "cais/wmdp", "wmdp-bio", {"test": [_mcq(i, "wmdp") for i in range(40)]})
    for subject in SAE_BENCH_RETAIN_SUBJECTS:
        config = subject.replace(" ", "_")
        populate_datasets_cache(cache, "cais/mmlu", config, {"test": [_mcq(i, config) for i in range(12)]})
    assert cfg.needs_hub() == []
    out = run_unlearning(knowledge_context(knowledge_model), {"s": random_sae("abstopk", seed=2)}, cfg)["s"]
    info = out.eval_result_unstructured
    assert info["mode"] == "wmdp" and info["forget_set"].startswith("WMDP-bio (cais/wmdp wmdp-bio test)")
    assert info["forget_candidates"] == 24 and info["forget_selection_texts"] == 16  # 40 questions: 24 scored
    assert info["retain_by_source"]["mmlu-retain"]["candidates"] == 24  # 4 x 12 sae_bench retain questions, capped
    assert info["instruction_tuned"] is False and "mmlu_proxy" not in info
    assert 0.0 <= out.eval_result_metrics.unlearning.unlearning_score <= 1.0


def test_core_on_the_piles_held_out_split(knowledge_model, offline):
    ctx = knowledge_context(knowledge_model)
    assert CoreEvalConfig(dataset_source="pile").needs_hub() == [f"core.dataset_source=pile ({canonical.PILE[0]})"]
    words = "the of and to in is was for on that with as by at from his her an which"
    docs = [{"text": f"{i} " + " ".join(words.split()[(i % 7) :] + words.split()[: (i % 7)])} for i in range(1500)]
    write_local_copy(offline / "copies", canonical.PILE[0], None, {"train.jsonl": docs})
    assert CoreEvalConfig(dataset_source="pile").needs_hub() == []
    sae = random_sae("topk", seed=4)
    pile = run_core(ctx, {"s": sae}, CoreEvalConfig(dataset_source="pile"))["s"]
    plain = run_core(ctx, {"s": sae})["s"]
    assert pile.eval_config.dataset.startswith("pile held-out split") and plain.eval_config.dataset == "random tokens"
    assert pile.eval_config.context_size == plain.eval_config.context_size == ctx.eval_tokens.shape[1]
    assert pile.eval_config.n_ce_tokens == plain.eval_config.n_ce_tokens
    ce = pile.eval_result_metrics.model_performance_preservation.ce_loss_without_sae
    assert ce != plain.eval_result_metrics.model_performance_preservation.ce_loss_without_sae
