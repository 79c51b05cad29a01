"""What every evaluation shares: the model fields of its config, option resolution, and the bookkeeping and
provenance fields of its output (as sae_bench's schemas name them)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, TypeVar

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig
from sae_lens import SAE

from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EvalContext, hook_name

SAE_BENCH_COMMIT = "sae-bench 0.6.0 (PyPI)"

C = TypeVar("C")


@dataclass
class ModelEvalConfig(BaseEvalConfig):
    """The fields every evaluation's config starts with; the runner fills them from the run."""

    model_name: str = Field(default="", title="Model", description="Model key in abstopk_eval's registry")
    layer: int = Field(default=0, title="Layer", description="Residual stream after this block (the SAEs' layer)")
    hook_name: str = Field(default="", title="Hook", description="TransformerLens-style hook name of the activations")
    llm_dtype: str = Field(default="float32", title="LLM dtype", description="dtype of the language model")


def llm_dtype(adapter: Any) -> str:
    try:
        return str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
    except (AttributeError, StopIteration, TypeError):
        return "float32"


def resolve_config(cls: type[C], ctx: EvalContext, eval_name: str, config: C | None, **fixed: Any) -> C:
    """`config`, or the defaults overridden by `ctx.eval_options[eval_name]`; model fields filled from ctx
    (also in a given config whose model_name is empty)."""
    base = {
        "model_name": ctx.model_key,
        "layer": ctx.layer,
        "hook_name": hook_name(ctx.layer),
        "llm_dtype": llm_dtype(ctx.adapter),
    }
    if config is not None:
        return dataclasses.replace(config, **base) if not getattr(config, "model_name", "") else config  # type: ignore[type-var]
    options = dict(getattr(ctx, "eval_options", {}).get(eval_name, {}))
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown option(s) for evaluation {eval_name!r}: {', '.join(unknown)}")
    return cls(**{**base, **fixed, **options})


def output_common(ctx: EvalContext, sae_id: str, sae: SAE) -> dict[str, Any]:
    """The sae_bench bookkeeping fields and our provenance, as every evaluation writes them."""
    metadata = getattr(sae.cfg, "metadata", None)
    meta = {k: (metadata.get(k) if metadata is not None else None) for k in ("variant", "k", "seed", "preset")}
    return dict(
        eval_id=str(uuid.uuid4()),
        datetime_epoch_millis=int(time.time() * 1000),
        sae_bench_commit_hash=SAE_BENCH_COMMIT,
        sae_lens_id=sae_id,
        sae_lens_release_id=None,
        sae_lens_version=ctx.provenance.get("versions", {}).get("sae-lens"),
        sae_cfg_dict=sae.cfg.to_dict(),
        provenance={**ctx.provenance, "sae_id": sae_id, **meta},
    )
