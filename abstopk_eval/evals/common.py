"""What every evaluation shares: the model fields of its config and the bookkeeping and provenance fields of its
output (as sae_bench's schemas name them). Options are resolved in `abstopk_eval.evals.options`."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig
from sae_lens import SAE

from abstopk_eval.evals.context import EvalContext
from abstopk_eval.provenance import SaeProvenance, package_version, result_provenance, sae_bench_version


@dataclass
class ModelEvalConfig(BaseEvalConfig):
    """The fields every evaluation's config starts with; the runner fills them from the run."""

    model_name: str = Field(default="", title="Model", description="Model key in abstopk_eval's registry")
    layer: int = Field(default=0, title="Layer", description="Residual stream after this block (the SAEs' layer)")
    hook_name: str = Field(default="", title="Hook", description="TransformerLens-style hook name of the activations")
    llm_dtype: str = Field(default="float32", title="LLM dtype", description="dtype of the language model")


def output_common(
    ctx: EvalContext, sae_id: str, sae: SAE | None, provenance: SaeProvenance | None = None
) -> dict[str, Any]:
    """The sae_bench bookkeeping fields and our provenance, as every evaluation writes them.

    `sae` is None for a baseline that scores no SAE (e.g. steering's unsteered model); `provenance` overrides what
    the context knows about `sae_id` (by default `ctx.sae_provenance`, else the SAE's own metadata)."""
    sae_prov = provenance or ctx.sae_provenance.get(sae_id) or SaeProvenance.from_sae(sae_id, sae)
    release_id, lens_id = sae_prov.sae_lens_ids
    return dict(
        eval_id=str(uuid.uuid4()),
        datetime_epoch_millis=int(time.time() * 1000),
        sae_bench_commit_hash=sae_bench_version(),
        sae_lens_id=lens_id,
        sae_lens_release_id=release_id,
        sae_lens_version=ctx.provenance.versions.get("sae-lens") or package_version("sae-lens"),
        sae_cfg_dict=sae.cfg.to_dict() if sae is not None else None,
        provenance=result_provenance(ctx.provenance, sae_prov),
    )
