"""The main job as steps: plan -> model -> activation cache -> training -> evaluations -> reports."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abstopk_eval.config import TrainPreset
from abstopk_eval.data.activation_cache import ActivationCache, CacheKey
from abstopk_eval.data.corpus import PackedTokens, build_token_sequences
from abstopk_eval.evals.context import EvalContext, get_eval, hook_name
from abstopk_eval.io import default_cache_dir, sha256_file
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.loading import load_model
from abstopk_eval.models.registry import ModelSpec
from abstopk_eval.results import package_versions, result_path, write_eval_output
from abstopk_eval.saes.io import load_sae
from abstopk_eval.saes.variants import get_variant, sae_id
from abstopk_eval.training import distributed
from abstopk_eval.training.trainer import TRAINING_JSON, TrainJob, train_jobs

log = logging.getLogger("abstopk_eval")


@dataclass(frozen=True)
class RunPlan:
    model: ModelSpec
    layer: int
    variants: list[str]
    ks: list[int]
    seeds: list[int]
    preset: TrainPreset
    evals: list[str]
    corpus: str = "wiki-en"
    device: str = "cpu"
    model_path: str | None = None
    results_dir: Path = Path("results")
    runs_dir: Path = Path("runs")
    reports_dir: Path = Path("reports")
    cache_dir: Path | None = None
    write_report: bool = True
    sparse_training: bool = True
    bf16_training: bool = False


def plan_jobs(plan: RunPlan) -> list[TrainJob]:
    """One job per (variant, k, seed); variants without k get one job per seed."""
    jobs: dict[str, TrainJob] = {}
    for variant in plan.variants:
        ks = plan.ks if get_variant(variant).uses_k else plan.ks[:1]
        for k in ks:
            for seed in plan.seeds:
                sid = sae_id(variant, k, seed, plan.preset.name)
                out_dir = plan.runs_dir / plan.model.key / f"layer_{plan.layer}" / sid
                jobs.setdefault(sid, TrainJob(variant, k, seed, plan.preset.name, out_dir))
    return list(jobs.values())


def checkpoint_digest(job: TrainJob) -> str | None:
    """sha256 of the SAE weights a result was computed from (results record it as provenance)."""
    weights = job.sae_dir / "sae_weights.safetensors"
    return sha256_file(weights) if weights.is_file() else None


def _result_is_current(path: Path, digest: str | None) -> bool:
    """A result counts as done only if it scored this very checkpoint (a retrained SAE is re-evaluated)."""
    if digest is None or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("provenance", {}).get("sae_weights_sha256") == digest
    except (OSError, json.JSONDecodeError):
        return False


def _pending_evals(plan: RunPlan, jobs: list[TrainJob]) -> dict[str, list[TrainJob]]:
    digests = {job.sae_id: checkpoint_digest(job) for job in jobs}
    pending = {}
    for name in plan.evals:
        todo = [
            j
            for j in jobs
            if not _result_is_current(
                result_path(plan.results_dir, plan.model.key, plan.layer, j.sae_id, name), digests[j.sae_id]
            )
        ]
        if todo:
            pending[name] = todo
    return pending


class _Session:
    """Lazily loaded model, token sequences and activation caches shared by the steps of one run."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.cache_root = plan.cache_dir or default_cache_dir()
        self._adapter: ModelAdapter | None = None
        self.model_source = ""

    @property
    def adapter(self) -> ModelAdapter:
        if self._adapter is None:
            log.info("loading model %s", self.plan.model.key)
            loaded = load_model(
                self.plan.model.key, model_path=self.plan.model_path, cache_dir=self.cache_root, device=self.plan.device
            )
            self.model_source = loaded.source_description
            self._adapter = ModelAdapter.from_loaded(loaded)
        return self._adapter

    def tokens(self, split: str, max_tokens: int | None) -> PackedTokens:
        return build_token_sequences(
            self.plan.corpus, self.adapter.tokenizer, self.plan.model.context_size, split, max_tokens
        )

    def cache(self, packed: PackedTokens, n_tokens: int) -> ActivationCache:
        key = CacheKey(
            model=self.plan.model.key,
            layer=self.plan.layer,
            corpus=self.plan.corpus,
            n_tokens=n_tokens,
            seq_len=self.plan.model.context_size,
            split=packed.split,
        )

        def build_or_load() -> ActivationCache:
            return ActivationCache.build_or_load(
                self.cache_root / "activations", key, self.adapter, packed, d_in=self.plan.model.d_model
            )

        if distributed.is_main():  # one LM pass; the other ranks wait, then load what it wrote
            cache = build_or_load()
        distributed.barrier()
        return cache if distributed.is_main() else build_or_load()

    def provenance(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "model": plan.model.key,
            "model_hf_id": plan.model.hf_id,
            "model_source": self.model_source,
            "layer": plan.layer,
            "hook_name": hook_name(plan.layer),
            "preset": plan.preset.name,
            "corpus": plan.corpus,
            "versions": package_versions(),
        }


def train_missing(session: _Session, jobs: list[TrainJob]) -> None:
    plan, preset = session.plan, session.plan.preset
    packed = session.tokens("train", preset.cache_tokens)
    cache = session.cache(packed, preset.cache_tokens)
    metadata = {
        **session.provenance(),
        "model_name": plan.model.hf_id,
        "hook_name": hook_name(plan.layer),
        "train_corpus": packed.provenance(),
        "activation_cache": cache.provenance(),
        "train_tokens": preset.train_tokens,
        "epochs_over_cache": preset.train_tokens / max(cache.n_rows, 1),
    }

    def stream_for_seed(seed: int):
        return lambda start_step: cache.iter_batches(
            preset.batch_size, n_tokens=preset.train_tokens, seed=seed, start_token=start_step * preset.batch_size
        )

    train_jobs(
        jobs,
        stream_for_seed,
        d_in=cache.d_in,
        preset=preset,
        mean=cache.mean,
        scale=cache.scale,
        metadata=metadata,
        device=plan.device,
        sparse=plan.sparse_training,
        bf16=plan.bf16_training,
    )


def evaluate_missing(session: _Session, pending: dict[str, list[TrainJob]]) -> None:
    plan = session.plan
    heldout = session.tokens("eval", plan.preset.heldout_tokens)
    heldout_cache = session.cache(heldout, heldout.n_tokens)
    n_ce_seqs = max(1, math.ceil(plan.preset.eval_tokens / heldout.seq_len))
    provenance = {**session.provenance(), "heldout_corpus": heldout.provenance()}
    for eval_name, jobs in pending.items():
        spec = get_eval(eval_name)
        saes = {job.sae_id: load_sae(job.sae_dir, device=plan.device, expected_d_in=plan.model.d_model) for job in jobs}
        info = {}
        for job in jobs:
            path = job.out_dir / TRAINING_JSON
            info[job.sae_id] = json.loads(path.read_text()) if path.is_file() else {}
        ctx = EvalContext(
            adapter=session.adapter,
            model_key=plan.model.key,
            model_name=plan.model.hf_id,
            layer=plan.layer,
            eval_tokens=heldout.tokens[:n_ce_seqs],
            heldout_activations=lambda: torch.from_numpy(np.array(heldout_cache.activations)),
            dataset=f"{heldout.info.name} held-out split ({heldout.info.source})",
            provenance=provenance,
            training_info=info,
            device=plan.device,
        )
        log.info("evaluation %s on %d SAEs", eval_name, len(saes))
        digests = {job.sae_id: checkpoint_digest(job) for job in jobs}
        for sae_name, output in spec.run(ctx, saes).items():
            if sae_name in digests:  # extra entries (e.g. steering's "dim", "original") score no SAE checkpoint
                output.provenance["sae_weights_sha256"] = digests[sae_name]
            write_eval_output(result_path(plan.results_dir, plan.model.key, plan.layer, sae_name, eval_name), output)


def execute(plan: RunPlan) -> None:
    """Train what is missing, evaluate what has no result, rebuild reports.

    Under torchrun every rank trains its share of each batch; evaluation and reports run on rank 0 only.
    """
    distributed.init_from_env(plan.device)
    jobs = plan_jobs(plan)
    session = _Session(plan)
    if any(not job.is_finished() for job in jobs):
        train_missing(session, jobs)
    if not distributed.is_main():
        return
    pending = _pending_evals(plan, jobs)
    if pending:
        evaluate_missing(session, pending)
    else:
        log.info("every requested evaluation already has results in %s", plan.results_dir)
    if plan.write_report:
        from abstopk_eval.report import build_reports

        build_reports(plan.results_dir, plan.reports_dir)
