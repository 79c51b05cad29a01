"""The main job as steps: plan -> model -> activation cache -> training -> evaluations -> reports."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abstopk_eval import faults, runtime
from abstopk_eval.config import TrainPreset
from abstopk_eval.data.activation_cache import ActivationCache, CacheKey, trainable_positions
from abstopk_eval.data.activation_stream import ActivationStream, unique_sequences
from abstopk_eval.data.corpus import DEFAULT_HELDOUT_FRACTION, PackedTokens, build_token_sequences, corpus_version
from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EvalContext, get_eval, hook_name
from abstopk_eval.evals.options import config_identity
from abstopk_eval.identity import (
    IDENTITY_JSON,
    SHORT,
    CorpusIdentity,
    EvalDataIdentity,
    ModelIdentity,
    ResultIdentity,
    TrainIdentity,
    identity_hash,
)
from abstopk_eval.io import atomic_write_json, default_cache_dir, sha256_file, sha256_file_cached, wait_for_path
from abstopk_eval.models.adapter import ModelAdapter
from abstopk_eval.models.loading import load_model, sequence_start_identity, weights_identity
from abstopk_eval.models.pass_cache import PassCache, pass_cache_root, pass_identity
from abstopk_eval.models.registry import ModelSpec
from abstopk_eval.provenance import RunProvenance, SaeProvenance, package_versions
from abstopk_eval.results import baseline_path, current_results, layer_dir, result_path, write_eval_output
from abstopk_eval.saes.io import load_sae
from abstopk_eval.saes.variants import InferenceRule, get_variant, sae_id
from abstopk_eval.training import distributed, placement
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
    eval_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """eval name -> {config field: value}, validated by `abstopk_eval.evals.options`."""
    force_rerun: bool = False
    """Evaluate every target again even where a current result exists (`--force-rerun`); training is unaffected:
    a finished SAE is reused (delete its folder under runs_dir to retrain it)."""
    wandb_project: str | None = None
    """Weights & Biases project that the training curves of SAEs trained by this run are logged to
    (`--wandb`, `abstopk_eval.tracking`); None: no logging."""
    llm_dtype: str = "float32"
    """dtype the language model computes in (`runtime.resolve_llm_dtype`); part of the model's identity."""
    llm_batch_size: int | None = None
    """Sequences per language-model forward pass; None: `runtime.DEFAULT_LLM_BATCH_SIZE` when caching or streaming,
    the evaluations' own default (`EvalContext.batch_size`) when evaluating."""
    tf32: bool = False
    """TF32 matmuls on CUDA (`runtime.tf32_enabled`); part of the training identity when on."""
    activation_source: str = "cache"
    """"cache" (an on-disk activation cache, revisited as needed) or "stream" (`data.activation_stream`)."""
    epochs: int = 1
    """Streamed runs: passes over the streamed tokens (unique tokens = train_tokens / epochs)."""
    allow_repeats: bool = False
    """Allow more than `runtime.MAX_EPOCHS` passes over the training tokens."""
    cache_dtype: str = "float32"
    """Storage dtype of the training activation cache."""
    sae_ids: frozenset[str] | None = None
    """Only these SAEs of the plan's variants x k x seeds (a sweep shard); None: all of them."""


def sae_run_dir(plan: RunPlan, folder: str) -> Path:
    """runs/<model>/layer_<L>/<folder>: where an SAE's checkpoint (trained here or converted) lives."""
    return plan.runs_dir / plan.model.key / f"layer_{plan.layer}" / folder


@dataclass(frozen=True)
class RunIdentities:
    """What identifies a run's model, text and evaluation data, found without loading the model."""

    model: ModelIdentity
    corpus: CorpusIdentity
    eval_data: EvalDataIdentity

    @classmethod
    def of(cls, plan: RunPlan) -> RunIdentities:
        weights = weights_identity(plan.model, model_path=plan.model_path, cache_dir=plan.cache_dir)
        start = sequence_start_identity(plan.model, plan.model_path)
        model = ModelIdentity(key=plan.model.key, weights=weights, dtype=plan.llm_dtype, sequence_start=start)
        corpus = CorpusIdentity(
            name=plan.corpus,
            version=corpus_version(plan.corpus),
            seq_len=plan.model.context_size,
            heldout_fraction=DEFAULT_HELDOUT_FRACTION,
        )
        return cls(model, corpus, EvalDataIdentity(model, plan.layer, corpus, plan.preset.eval_identity()))

    def cache_source(self, dtype: str = "float32") -> str:
        """What besides its key decides an activation cache (see `CacheKey.source`): the model, the text's version
        and (when not float32) the storage dtype."""
        stored = {} if dtype == "float32" else {"dtype": dtype}
        return identity_hash({"model": self.model.as_dict(), "corpus_version": self.corpus.version, **stored})


CALIBRATION_ROWS = 65_536
"""Training activations on which batch-level variants' inference thresholds are calibrated (`saes.calibration`)."""


def train_identity(plan: RunPlan, ids: RunIdentities, variant: str, k: int, seed: int) -> TrainIdentity:
    spec = get_variant(variant)
    export = None
    if spec.inference is InferenceRule.RUNNING_THRESHOLD:
        export = {"inference_threshold": f"calibrated to mean L0 = k on up to {CALIBRATION_ROWS} training activations"}
    return TrainIdentity(
        activations=activations_identity(plan),
        matmul="tf32" if plan.tf32 else None,
        model=ids.model,
        layer=plan.layer,
        corpus=ids.corpus,
        training=plan.preset.training_identity(),
        variant=variant,
        k=k if get_variant(variant).uses_k else None,
        seed=seed,
        training_path="sparse" if plan.sparse_training else "dense",
        encoder_dtype="bfloat16" if plan.bf16_training else "float32",
        export=export,
    )


def activations_identity(plan: RunPlan) -> dict[str, Any] | None:
    """What decides the training activations beyond model, layer and corpus: None for a float32 cache (the
    original path, so its identities stay as they were)."""
    if plan.activation_source == "stream":
        return {
            "source": "stream",
            "epochs": plan.epochs,
            "shuffle_buffer_tokens": runtime.STREAM_BUFFER_TOKENS,
            "order_seed": STREAM_ORDER_SEED,
        }
    if plan.cache_dtype != "float32":
        return {"source": "cache", "cache_dtype": plan.cache_dtype}
    return None


STREAM_ORDER_SEED = 0
"""Streamed runs: every seed trains on the same stream (one LM pass for all), shuffled with this seed."""


def plan_jobs(plan: RunPlan, ids: RunIdentities) -> list[TrainJob]:
    """One job per (variant, k, seed); variants without k get one job per seed. Each job's folder is named by its
    identity, so SAEs trained under other settings are never taken for it."""
    jobs: dict[str, TrainJob] = {}
    for variant in plan.variants:
        ks = plan.ks if get_variant(variant).uses_k else plan.ks[:1]
        for k in ks:
            for seed in plan.seeds:
                sid = sae_id(variant, k, seed, plan.preset.name)
                ident = train_identity(plan, ids, variant, k, seed)
                jobs.setdefault(
                    sid,
                    TrainJob(variant, k, seed, plan.preset.name, sae_run_dir(plan, ident.folder(sid)), ident.record()),
                )
    return list(jobs.values())


def results_folder(label: str, sae_identity_hash: str, eval_data_hash: str) -> str:
    """`<label>-<hash8>`: the results folder of one SAE evaluated on one run's data."""
    return f"{label}-{identity_hash({'sae': sae_identity_hash, 'eval_data': eval_data_hash})[:SHORT]}"


def group_hash(sae_identity: dict[str, Any], eval_data_hash: str) -> str:
    """Identity of the SAE without its seed, with the evaluation data: results that may be averaged over seeds."""
    without_seed = {k: v for k, v in sae_identity.items() if k not in ("seed", "hash")}
    return identity_hash({"sae": without_seed, "eval_data": eval_data_hash})


@dataclass(frozen=True)
class EvalTarget:
    """One SAE checkpoint to evaluate: its results folder name, its sae_lens checkpoint, its identity, and what its
    results record."""

    sae_id: str
    """The results folder name, `<label>-<hash8>` (see `results_folder`)."""
    sae_dir: Path
    identity: dict[str, Any] = field(default_factory=dict, compare=False)
    """The SAE's identity record (a TrainIdentity, or a checkpoint's source identity), with its "hash"."""
    training_json: Path | None = None
    """training.json of an SAE trained here (core reports its training curve and time)."""
    source: dict[str, Any] | None = None
    """Checkpoints converted from disk: where they came from (see `SaeProvenance.source`)."""

    @property
    def weights(self) -> Path:
        return self.sae_dir / "sae_weights.safetensors"

    def digest(self, digest_dir: Path | None = None) -> str | None:
        """sha256 of the weights a result is computed from (None while the checkpoint does not exist); with
        `digest_dir`, remembered there per file version (`io.sha256_file_cached`: paper-size SAEs are ~1 GB each)."""
        if not self.weights.is_file():
            return None
        return sha256_file(self.weights) if digest_dir is None else sha256_file_cached(self.weights, digest_dir)

    def training_info(self) -> dict[str, Any]:
        if self.training_json is None or not self.training_json.is_file():
            return {}
        return json.loads(self.training_json.read_text())


def target_of(job: TrainJob, ids: RunIdentities) -> EvalTarget:
    identity = dict(job.identity or {})
    return EvalTarget(
        results_folder(job.sae_id, identity.get("hash", ""), ids.eval_data.hash),
        job.sae_dir,
        identity=identity,
        training_json=job.out_dir / TRAINING_JSON,
    )


@dataclass(frozen=True)
class PlannedResult:
    """What one evaluation of one target must be to count as current."""

    identity: dict[str, Any]
    """ResultIdentity record, plus the seed-free "group" hash the report averages over and the options as given
    (neither enters the hash: the config already holds the options)."""
    config_tag: str | None
    """None for the evaluation's default config, else the short hash of the one the plan asks for."""


def planned_result(plan: RunPlan, ids: RunIdentities, target: EvalTarget, eval_name: str) -> PlannedResult:
    config = config_identity(eval_name, plan.eval_options.get(eval_name))
    tag = None if config == config_identity(eval_name) else identity_hash(config)[:SHORT]
    result = ResultIdentity(
        sae=target.identity.get("hash", ""), eval_data=ids.eval_data.hash, eval_name=eval_name, config=config
    )
    group = group_hash(target.identity, ids.eval_data.hash)
    options = dict(plan.eval_options.get(eval_name) or {})
    return PlannedResult({**result.record(), "group": group, "options": options}, tag)


def pending_evaluations(
    plan: RunPlan, targets: Sequence[EvalTarget], ids: RunIdentities
) -> dict[str, list[tuple[EvalTarget, PlannedResult]]]:
    """Evaluation name -> the targets (with what their result must be) that have no current result for it, in the
    plan's evaluation order."""
    digest_dir = plan.cache_dir or default_cache_dir()
    digests = {t.sae_id: t.digest(digest_dir) for t in targets}
    planned = {(t.sae_id, name): planned_result(plan, ids, t, name) for name in plan.evals for t in targets}
    expected = {(sid, name, p.config_tag): (p.identity["hash"], digests[sid]) for (sid, name), p in planned.items()}
    forced = plan.force_rerun
    current = set() if forced else current_results(plan.results_dir, plan.model.key, plan.layer, expected)
    pending = {}
    for name in plan.evals:
        todo = [
            (t, planned[t.sae_id, name])
            for t in targets
            if (t.sae_id, name, planned[t.sae_id, name].config_tag) not in current
        ]
        if todo:
            pending[name] = todo
    return pending


class Session:
    """Lazily loaded model, token sequences and activation caches shared by the steps of one run."""

    def __init__(self, plan: RunPlan, ids: RunIdentities | None = None):
        self.plan = plan
        self.cache_root = plan.cache_dir or default_cache_dir()
        self._ids = ids
        self._adapter: ModelAdapter | None = None
        self.model_source = ""
        runtime.select_device(plan.device)
        if runtime.on_cuda(plan.device):
            runtime.apply_matmul_precision(plan.tf32)

    @property
    def ids(self) -> RunIdentities:
        if self._ids is None:
            self._ids = RunIdentities.of(self.plan)
        return self._ids

    @property
    def adapter(self) -> ModelAdapter:
        if self._adapter is None:
            log.info("loading model %s", self.plan.model.key)
            loaded = load_model(
                self.plan.model,
                model_path=self.plan.model_path,
                cache_dir=self.cache_root,
                dtype=runtime.torch_dtype(self.plan.llm_dtype),
                device=self.plan.device,
            )
            self.model_source = loaded.source_description
            self._adapter = ModelAdapter.from_loaded(loaded)
            root = pass_cache_root(self.cache_root)
            if root is not None:
                self._adapter.pass_cache = PassCache(root, pass_identity(self.ids.model.as_dict(), self.plan.device))
        return self._adapter

    @property
    def loaded_model(self) -> Any:
        """The language model if it has been loaded (else None: nothing to move off the GPU)."""
        return None if self._adapter is None else self._adapter.model

    def tokens(self, split: str, max_tokens: int | None) -> PackedTokens:
        return build_token_sequences(
            self.plan.corpus, self.adapter.tokenizer, self.plan.model.context_size, split, max_tokens
        )

    def cache(self, packed: PackedTokens, n_tokens: int, dtype: str = "float32") -> ActivationCache:
        key = CacheKey(
            model=self.plan.model.key,
            layer=self.plan.layer,
            corpus=self.plan.corpus,
            n_tokens=n_tokens,
            seq_len=self.plan.model.context_size,
            split=packed.split,
            source=self.ids.cache_source(dtype),
        )

        def build_or_load() -> ActivationCache:
            return ActivationCache.build_or_load(
                self.cache_root / "activations",
                key,
                self.adapter,
                packed,
                batch_size=self.plan.llm_batch_size or runtime.DEFAULT_LLM_BATCH_SIZE,
                dtype=dtype,
                d_in=self.plan.model.d_model,
                digest_dir=self.cache_root,
            )

        if not distributed.is_main():  # rank 0 builds (one LM pass); the others wait for its finished folder
            wait_for_path(
                self.cache_root / "activations" / key.dirname,
                what="the activation cache rank 0 builds",
                timeout_s=distributed.timeout_s(),
            )
        return build_or_load()

    def provenance(self, **fields: Any) -> RunProvenance:
        plan = self.plan
        return RunProvenance(
            model=plan.model.key,
            model_hf_id=plan.model.hf_id,
            model_source=self.model_source,
            layer=plan.layer,
            hook_name=hook_name(plan.layer),
            preset=plan.preset.name,
            corpus=plan.corpus,
            versions=package_versions(),
            **fields,
        )


@dataclass
class TrainingSource:
    """Where one run's training batches come from, and what training records about them."""

    batches_for_seed: Callable[[int], Callable[[int], Iterator[torch.Tensor]]]
    """seed -> (start step -> normalised batches), as `train_jobs` takes it."""
    mean: torch.Tensor
    scale: float
    calibration_rows: torch.Tensor
    metadata: dict[str, Any]
    """The corpus, the activations and the unique tokens / epochs (into training.json)."""
    one_pass: bool
    """Every seed shares one pass (a stream: the model runs once for all)."""
    uses_model: bool
    """The model computes batches during training (a stream), so it stays on the GPU."""


def cached_source(session: Session) -> TrainingSource:
    """Batches drawn from an activation cache of the preset's cache_tokens (built once), one pass per seed."""
    plan, preset = session.plan, session.plan.preset
    packed = session.tokens("train", preset.cache_tokens)
    rows = int(trainable_positions(packed.tokens, session.adapter.sequence_start).sum())  # before the LM runs
    epochs = runtime.check_repeats(
        preset.train_tokens, rows, allow=plan.allow_repeats, what=f"an activation cache of {plan.corpus}"
    )
    cache = session.cache(packed, preset.cache_tokens, plan.cache_dtype)

    def for_seed(seed: int) -> Callable[[int], Iterator[torch.Tensor]]:
        return lambda start_step: placement.prefetch(
            cache.iter_batches(
                preset.batch_size,
                n_tokens=preset.train_tokens,
                seed=seed,
                start_token=start_step * preset.batch_size,
                rows=distributed.shard_bounds(preset.batch_size),  # each rank reads only its share
            ),
            plan.device,
        )

    metadata = {
        "train_corpus": packed.provenance(),
        "activation_cache": cache.provenance(),
        "activations": {"source": "cache", "unique_tokens": cache.n_rows, "epochs": epochs, "dtype": plan.cache_dtype},
        "epochs_over_cache": epochs,
    }
    return TrainingSource(for_seed, cache.mean, cache.scale, _calibration_rows(cache), metadata, False, False)


def streamed_source(session: Session) -> TrainingSource:
    """Batches computed by the model on the fly (`data.activation_stream`): the budget's tokens, each seen once
    unless epochs are asked for; every seed trains on the same stream."""
    plan, preset = session.plan, session.plan.preset
    seen = preset.total_steps * preset.batch_size
    packed = unique_sequences(
        lambda max_tokens: session.tokens("train", max_tokens),
        math.ceil(seen / plan.epochs),
        session.adapter.sequence_start,
        plan.model.context_size,
    )
    unique = int(trainable_positions(packed.tokens, session.adapter.sequence_start).sum())
    runtime.check_repeats(seen, unique, allow=plan.allow_repeats, what=f"corpus {plan.corpus}")  # before the LM runs
    stream = ActivationStream(
        session.adapter,
        plan.layer,
        packed,
        buffer_rows=runtime.STREAM_BUFFER_TOKENS,
        seed=STREAM_ORDER_SEED,
        llm_batch_size=plan.llm_batch_size or runtime.DEFAULT_LLM_BATCH_SIZE,
    )
    provenance = stream.provenance(preset.train_tokens, preset.batch_size)

    def for_seed(seed: int) -> Callable[[int], Iterator[torch.Tensor]]:
        return lambda start_step: stream.iter_batches(
            preset.batch_size, n_tokens=preset.train_tokens, start_token=start_step * preset.batch_size
        )

    metadata = {"train_corpus": packed.provenance(), "activations": provenance}
    rows = stream.calibration_rows(CALIBRATION_ROWS)
    return TrainingSource(for_seed, stream.mean, stream.scale, rows, metadata, True, True)


def train_missing(session: Session, jobs: list[TrainJob]) -> None:
    plan, preset = session.plan, session.plan.preset
    source = streamed_source(session) if plan.activation_source == "stream" else cached_source(session)
    metadata = {
        **{k: v for k, v in dataclasses.asdict(session.provenance()).items() if v is not None},
        "model_name": plan.model.hf_id,
        "hook_name": hook_name(plan.layer),
        **source.metadata,
        "train_tokens": preset.train_tokens,
        "unique_tokens": source.metadata["activations"]["unique_tokens"],
        "epochs": source.metadata["activations"]["epochs"],
        "llm_dtype": plan.llm_dtype,
    }
    with placement.offloaded(None if source.uses_model else session.loaded_model, plan.device):
        train_jobs(
            jobs,
            source.batches_for_seed,
            d_in=plan.model.d_model,
            preset=preset,
            mean=source.mean,
            scale=source.scale,
            metadata=metadata,
            device=plan.device,
            sparse=plan.sparse_training,
            bf16=plan.bf16_training,
            calibration_rows=source.calibration_rows,
            one_pass=source.one_pass,
        )


def _calibration_rows(cache: ActivationCache) -> torch.Tensor:
    """A seeded sample of the raw training activations (in cache order) for threshold calibration."""
    n = min(cache.n_rows, CALIBRATION_ROWS)
    index = np.sort(np.random.default_rng(0).choice(cache.n_rows, size=n, replace=False))
    return cache.rows(index)


def evaluate(plan: RunPlan, targets: Sequence[EvalTarget], session: Session | None = None) -> dict[str, list[str]]:
    """The one evaluation entry point (`run`, `compare` and `sweep` come through here).

    Runs every evaluation of the plan on every target without a current result (`pending_evaluations`: same
    identity, same weights), with the plan's evaluation options, and writes the results with their identity;
    returns {evaluation: [results folders evaluated]}.
    """
    session = session or Session(plan)
    ids = session.ids
    pending = pending_evaluations(plan, targets, ids)
    if not pending:
        log.info("every requested evaluation already has current results in %s", plan.results_dir)
        return {}
    heldout = session.tokens("eval", plan.preset.heldout_tokens)
    heldout_cache = session.cache(heldout, heldout.n_tokens)
    n_ce_seqs = max(1, math.ceil(plan.preset.eval_tokens / heldout.seq_len))
    done: dict[str, list[str]] = {}
    for eval_name, todo in pending.items():
        spec = get_eval(eval_name)
        saes = {t.sae_id: load_sae(t.sae_dir, device=plan.device, expected_d_in=plan.model.d_model) for t, _ in todo}
        ctx = EvalContext(
            adapter=session.adapter,
            model_key=plan.model.key,
            model_name=plan.model.hf_id,
            layer=plan.layer,
            eval_tokens=heldout.tokens[:n_ce_seqs],
            heldout_activations=lambda: torch.from_numpy(np.array(heldout_cache.activations)),
            dataset=f"{heldout.info.name} held-out split ({heldout.info.source})",
            provenance=session.provenance(heldout_corpus=heldout.provenance()),
            sae_provenance={
                t.sae_id: SaeProvenance.from_sae(
                    t.sae_id, saes[t.sae_id], sae_weights_sha256=t.digest(session.cache_root), source=t.source
                )
                for t, _ in todo
            },
            training_info={t.sae_id: t.training_info() for t, _ in todo},
            device=plan.device,
            **({"batch_size": plan.llm_batch_size} if plan.llm_batch_size else {}),
            eval_options=plan.eval_options,
        )
        log.info("evaluation %s on %d SAEs", eval_name, len(saes))
        outputs = spec.run(ctx, saes)
        for target, planned in todo:
            _write_folder_identity(plan, ids, target, planned)
            path = result_path(
                plan.results_dir, plan.model.key, plan.layer, target.sae_id, eval_name, planned.config_tag
            )
            write_eval_output(path, outputs[target.sae_id], identity=planned.identity)
        for method, output in ctx.baselines.get(eval_name, {}).items():  # e.g. steering's "dim": no SAE checkpoint
            write_eval_output(baseline_path(plan.results_dir, plan.model.key, plan.layer, eval_name, method), output)
        done[eval_name] = [t.sae_id for t, _ in todo]
        faults.point("eval-done", eval_name)
    return done


def _write_folder_identity(plan: RunPlan, ids: RunIdentities, target: EvalTarget, planned: PlannedResult) -> None:
    """results/<model>/layer_<L>/<folder>/identity.json: the SAE and evaluation data its results belong to."""
    record = {"sae": target.identity, "eval_data": ids.eval_data.record(), "group": planned.identity["group"]}
    path = layer_dir(plan.results_dir, plan.model.key, plan.layer) / target.sae_id / IDENTITY_JSON
    try:
        if json.loads(path.read_text()) == json.loads(json.dumps(record)):
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(path, record)


STAGES = ("cache", "train", "evaluate")
"""A run's stages, in order: build the activation caches, train the SAEs (all in one pass), evaluate them."""


def prepare_caches(session: Session, jobs: Sequence[TrainJob]) -> None:
    """The cache stage: build the training cache (cached runs with SAEs left to train) and the held-out cache
    (SAEs with evaluations pending), so the later stages only read them."""
    plan, preset = session.plan, session.plan.preset
    if plan.activation_source == "cache" and any(not job.is_finished() for job in jobs):
        session.cache(session.tokens("train", preset.cache_tokens), preset.cache_tokens, plan.cache_dtype)
    if plan.evals and pending_evaluations(plan, [target_of(job, session.ids) for job in jobs], session.ids):
        heldout = session.tokens("eval", preset.heldout_tokens)
        session.cache(heldout, heldout.n_tokens)


def execute(plan: RunPlan, stages: Sequence[str] = ("train", "evaluate")) -> None:
    """Run `stages` of the plan (see `STAGES`): train what is missing, evaluate what has no result, rebuild
    reports. Caches are built when first needed; the "cache" stage builds them up front (a cluster's first job).

    Under torchrun every rank trains its share of each batch, then evaluates its share of the SAEs
    (`distributed.my_share`); rank 0 writes the reports once every rank is done.
    """
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    distributed.init_from_env(plan.device)
    session = Session(plan)
    jobs = plan_jobs(plan, session.ids)
    if plan.sae_ids is not None:
        jobs = [job for job in jobs if job.sae_id in plan.sae_ids]
    if "cache" in stages and distributed.is_main():
        prepare_caches(session, jobs)
    fresh = [job for job in jobs if not job.is_finished()]
    if "train" in stages and fresh:
        train_missing(session, jobs)
        if plan.wandb_project and distributed.is_main():
            from abstopk_eval import tracking

            trained = [(job.sae_id, job.out_dir / TRAINING_JSON, dict(job.identity or {})) for job in fresh]
            tracking.log_training_curves(plan.wandb_project, trained, group=f"{plan.model.key}/layer_{plan.layer}")
    if "evaluate" not in stages:
        return
    untrained = [job.sae_id for job in jobs if not job.is_finished()]
    if untrained:
        raise UserError(f"cannot evaluate {', '.join(untrained)}: not trained yet (run the train stage first)")
    evaluate(plan, distributed.my_share([target_of(job, session.ids) for job in jobs]), session)
    distributed.barrier()
    if plan.write_report and distributed.is_main():
        from abstopk_eval.report import build_reports

        build_reports(plan.results_dir, plan.reports_dir)
