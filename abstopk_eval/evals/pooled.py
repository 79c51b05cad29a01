"""One language-model pass over a labelled dataset, shared by every SAE and by the probing evaluations.

`pooled_activations(ctx, saes, texts, ...)` tokenises the texts (the start token of `models.sequence_start`
prepended, as in every packed training row, truncated to
`context_length` tokens), runs the model up to `ctx.layer` in padded batches with an attention mask, and
returns per text

- the mean-pooled residual stream at the SAE layer (`model`, [n, d_model]), and
- for every SAE, the mean-pooled *signed* latent vector (`latents[sae_id]`, [n, d_sae]): each token is
  encoded on its own, then the latents are averaged over the same tokens.

Each text's first position, BOS / EOS tokens and padding are excluded from both means (`pooled_positions`;
sae_bench's `mask_bos_pad_eos_tokens`, plus the first position of tokenizers without a BOS, an attention sink
the SAEs never trained on).
Latents keep their sign (AbsTopK latents may be negative), so nothing downstream has to know the variant.

The model pass (`token_residuals`) keeps the residual of every pooled position, text by text; each SAE then
encodes those rows and pools its latents (`_encode_pooled`), which is all a new SAE costs. Where the adapter
has a pass cache (`models.pass_cache`, set by a run's session) the rows are stored on disk, keyed by the token
ids, the layer and the batching, so a later run or `compare` of a new SAE runs no model pass at all. Pooled
results are also memoised within the process, keyed by (adapter, layer, dataset name, number of texts, seed, a
digest of the texts, context length) and by (sae_id, a digest of the SAE's weights) for the latents, so sparse
probing, SCR and TPP on the same dataset share one pass; a later call that brings new SAEs encodes them from the
disk cache (or runs the model once more without one).

Ablation in pooled space (SCR / TPP). Those evaluations read the probe at the SAE's own layer and ablate SAE
latents S by replacing each token's activation x_t with x_t - sum_{i in S} z_{t,i} d_i, where d_i is latent
i's decoder contribution (W_dec[i], or whatever the SAE's affine decoder maps a unit latent to). Mean
pooling is linear, so

    mean_t (x_t - sum_{i in S} z_{t,i} d_i) = pooled_x - sum_{i in S} pooled_z_i d_i

exactly: ablation needs no further language-model pass, only `ablate(...)` below. The contribution is
subtracted with z's sign, so negating a latent (encoder column, encoder bias and decoder row) changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from abstopk_eval.errors import UserError
from abstopk_eval.evals.context import EvalContext
from abstopk_eval.models.batching import length_batches, pad_sequences, pad_token_id_of
from abstopk_eval.models.pass_cache import cached_pass, tensor_digest
from abstopk_eval.models.sequence_start import sequence_start_of

# characters kept per token before tokenising (only bounds the work on very long texts: 128 tokens of more
# than 64 characters each do not occur)
_CHARS_PER_TOKEN = 64


@dataclass
class PooledActivations:
    """Mean-pooled activations of n texts: model residual and every SAE's signed latents (CPU, float32)."""

    model: torch.Tensor
    latents: dict[str, torch.Tensor]
    n_tokens: torch.Tensor
    """[n] number of positions pooled per text (BOS / EOS / padding excluded)."""
    n_truncated: int
    """Texts longer than the context length (their first `context_length` tokens are used)."""


@dataclass
class TokenResiduals:
    """The SAE-independent part of a pooled pass: the residual rows of every pooled position, text by text."""

    rows: torch.Tensor
    """[sum(counts), d_model] float32: text 0's pooled positions, then text 1's, ..."""
    counts: torch.Tensor
    """[n] positions pooled per text."""
    model: torch.Tensor
    """[n, d_model] mean-pooled residual per text."""
    n_truncated: int


@dataclass
class _Entry:
    adapter: Any
    model: torch.Tensor
    n_tokens: torch.Tensor
    n_truncated: int
    latents: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)


_MEMO: dict[tuple, _Entry] = {}

POOLED_KIND = "pooled-residuals"


def clear_pooled_cache() -> None:
    """Forget every memoised pass (frees the pooled latents; the disk cache of `models.pass_cache` stays)."""
    _MEMO.clear()


def sae_digest(sae: SAE) -> str:
    """sha1 of an SAE's parameters (and class), so a changed SAE under the same id is re-encoded."""
    h = hashlib.sha1(type(sae).__name__.encode())
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    k = getattr(sae.cfg, "k", None)
    h.update(repr(k).encode())
    return h.hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def tokenize_texts(tokenizer: Any, texts: Sequence[str], context_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text (the start token of `models.sequence_start` prepended, first `context_length`
    kept) and how many were truncated."""
    clipped = [t[: context_length * _CHARS_PER_TOKEN] for t in texts]
    try:
        from transformers import PreTrainedTokenizerBase

        is_hf = isinstance(tokenizer, PreTrainedTokenizerBase)
    except ImportError:  # pragma: no cover
        is_hf = False
    if is_hf:
        ids = tokenizer(clipped, add_special_tokens=False, truncation=False, padding=False)["input_ids"]
    else:
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in clipped]
    start = sequence_start_of(tokenizer)
    ids = [start.prepend(i) for i in ids]
    n_truncated = sum(len(i) > context_length for i in ids)
    return [list(i[:context_length]) for i in ids], n_truncated


def special_token_ids(adapter: Any) -> list[int]:
    """BOS / EOS / padding ids: positions that are never pooled (`SequenceStart.pooling_excluded_ids`)."""
    return sorted(sequence_start_of(adapter.tokenizer).pooling_excluded_ids)


def pooled_positions(tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool mask of the positions that are pooled: real tokens that are neither special positions of
    `models.sequence_start` (each text's first position) nor BOS / EOS / padding ids."""
    start = sequence_start_of(tokenizer)
    excluded = torch.tensor(sorted(start.pooling_excluded_ids), dtype=torch.long)
    return attention_mask.bool() & ~start.special_mask(input_ids, attention_mask) & ~torch.isin(input_ids, excluded)


@torch.no_grad()
def _encode_pooled(sae: SAE, rows: torch.Tensor, counts: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean over each text's rows of sae.encode(row) -> [n_texts, d_sae] (CPU float32); `rows` are ordered by
    text (`TokenResiduals`), so each chunk of rows spans a contiguous range of texts."""
    device, dtype = sae.W_enc.device, sae.W_enc.dtype
    n = counts.shape[0]
    text_of_row = torch.repeat_interleave(torch.arange(n), counts)
    out = torch.zeros(n, sae.cfg.d_sae, dtype=torch.float32, device=device)
    for start in range(0, rows.shape[0], chunk):
        seg = text_of_row[start : start + chunk]
        first, last = int(seg[0]), int(seg[-1])
        z = sae.encode(rows[start : start + chunk].to(device, dtype)).float()
        # sum rows into their texts with a 0/1 matmul (index_add_ is slow per row on CPU)
        m = torch.zeros(last - first + 1, len(seg), dtype=torch.float32)
        m[seg - first, torch.arange(len(seg))] = 1.0
        out[first : last + 1] += m.to(device) @ z
    return (out / counts.to(device).clamp(min=1)[:, None].float()).cpu()


@torch.no_grad()
def pooled_activations(
    ctx: EvalContext,
    saes: dict[str, SAE],
    texts: Sequence[str],
    *,
    dataset: str,
    seed: int,
    context_length: int = 128,
    batch_tokens: int = 4096,
    sae_batch_tokens: int = 4096,
    desc: str = "pooled",
) -> PooledActivations:
    """Pooled residual and signed SAE latents for `texts` (one model pass for all SAEs; memoised in the process,
    the model pass also on disk where the adapter has a pass cache)."""
    adapter = ctx.adapter
    key = (id(adapter), ctx.model_key, ctx.layer, dataset, len(texts), seed, texts_digest(texts), context_length)
    digests = {sid: sae_digest(sae) for sid, sae in saes.items()}
    entry = _MEMO.get(key)
    if entry is not None and entry.adapter is not adapter:
        entry = None
    missing = {sid: sae for sid, sae in saes.items() if entry is None or (sid, digests[sid]) not in entry.latents}
    if entry is None or missing:
        resid = token_residuals(ctx, texts, dataset=dataset, context_length=context_length, batch_tokens=batch_tokens)
        if entry is None:
            entry = _Entry(adapter=adapter, model=resid.model, n_tokens=resid.counts, n_truncated=resid.n_truncated)
        what = f"{len(missing)} SAE(s)"
        for sid, sae in tqdm(missing.items(), desc=f"{desc}: {dataset} ({len(texts)} texts, {what})", unit="sae"):
            entry.latents[(sid, digests[sid])] = _encode_pooled(sae, resid.rows, resid.counts, sae_batch_tokens)
        _MEMO[key] = entry
    return PooledActivations(
        model=entry.model,
        latents={sid: entry.latents[(sid, digests[sid])] for sid in saes},
        n_tokens=entry.n_tokens,
        n_truncated=entry.n_truncated,
    )


@torch.no_grad()
def token_residuals(
    ctx: EvalContext, texts: Sequence[str], *, dataset: str, context_length: int = 128, batch_tokens: int = 4096
) -> TokenResiduals:
    """The residual at `ctx.layer` of every pooled position of `texts` (the model pass; from the adapter's pass
    cache when it has one, keyed by the token ids, the layer and the batching)."""
    adapter = ctx.adapter
    if len(texts) == 0:
        raise UserError(f"dataset {dataset!r} has no texts to evaluate on")
    ids, n_truncated = tokenize_texts(adapter.tokenizer, texts, context_length)

    def build() -> dict[str, torch.Tensor]:
        rows, counts, pooled_x = _model_pass(ctx, ids, batch_tokens, dataset)
        return {"rows": rows, "counts": counts, "model": pooled_x}

    flat = torch.tensor([t for i in ids for t in i], dtype=torch.long)
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
    key = {"ids": tensor_digest(flat, lengths), "batch_tokens": batch_tokens}
    got = cached_pass(adapter, POOLED_KIND, ctx.layer, key, build)
    return TokenResiduals(rows=got["rows"], counts=got["counts"], model=got["model"], n_truncated=n_truncated)


def _model_pass(
    ctx: EvalContext, ids: list[list[int]], batch_tokens: int, dataset: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows ordered by text, counts, pooled residual) from padded batches of the texts (longest first)."""
    adapter = ctx.adapter
    pad_id = pad_token_id_of(adapter.tokenizer)  # = ModelAdapter.pad_token_id; stand-ins need only a tokenizer
    n = len(ids)
    per_text: list[torch.Tensor | None] = [None] * n
    groups = length_batches([len(i) for i in ids], max_tokens=batch_tokens, longest_first=True)
    for group in tqdm(groups, desc=f"pooled: model pass over {dataset} ({n} texts)", unit="batch"):
        input_ids, mask = pad_sequences([ids[i] for i in group], pad_id, side="right")
        acts = adapter.activations(input_ids, ctx.layer, attention_mask=mask).float().cpu()
        valid = pooled_positions(adapter.tokenizer, input_ids, mask)
        for row, i in enumerate(group):
            per_text[i] = acts[row][valid[row]]
    counts = torch.tensor([t.shape[0] for t in per_text], dtype=torch.long)
    rows = torch.cat(per_text) if n else torch.zeros(0, adapter.d_model)
    pooled_x = torch.stack([t.sum(0) / max(t.shape[0], 1) for t in per_text])
    return rows, counts, pooled_x


def check_affine_decoder(sae: SAE, sae_id: str) -> None:
    """Pooled-space ablation needs a decoder that is affine in z (no per-input run-time normalisation)."""
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm not in (None, "none", "expected_average_only_in"):
        raise UserError(
            f"SAE {sae_id}: normalize_activations={norm!r} makes the decoder input-dependent; "
            "SCR/TPP ablation needs an affine decoder (fold the normalisation into the weights)"
        )


@torch.no_grad()
def decoder_rows(sae: SAE, latents: np.ndarray | Sequence[int] | None = None, chunk: int = 1024) -> np.ndarray:
    """decode(e_i) - decode(0) for the listed latents (all if None) as float64 [len, d_in]: each latent's
    contribution per unit activation (W_dec[i] for sae_lens's plain decoders, decoder-norm rescaling and
    other affine output maps included)."""
    d_sae = sae.cfg.d_sae
    idx = np.arange(d_sae) if latents is None else np.asarray(latents, dtype=np.int64)
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    zero = sae.decode(torch.zeros(1, d_sae, device=device, dtype=dtype)).double().cpu()
    out = np.empty((len(idx), sae.cfg.d_in), dtype=np.float64)
    for start in range(0, len(idx), chunk):
        part = torch.as_tensor(idx[start : start + chunk], device=device)
        onehot = torch.zeros(len(part), d_sae, device=device, dtype=dtype)
        onehot[torch.arange(len(part), device=device), part] = 1.0
        out[start : start + len(part)] = (sae.decode(onehot).double().cpu() - zero).reshape(len(part), -1).numpy()
    return out


def ablate(pooled_x: np.ndarray, pooled_z: np.ndarray, rows: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """Pooled activations with latents S removed: pooled_x - pooled_z[:, S] @ rows[S] (exact; see module doc).

    `rows` is `decoder_rows(sae)` (all latents); the latent's signed pooled value multiplies its decoder row.
    """
    if len(latents) == 0:
        return pooled_x
    return pooled_x - pooled_z[:, latents] @ rows[latents]
