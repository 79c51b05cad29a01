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

Results are memoised within the process, keyed by (adapter, layer, dataset name, number of texts, seed, a
digest of the texts, context length) for the model pass and by (sae_id, a digest of the SAE's weights) for the
latents, so sparse probing, SCR and TPP on the same dataset share one pass; a later call that brings new SAEs
runs the model once more for those only.

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
class _Entry:
    adapter: Any
    model: torch.Tensor
    n_tokens: torch.Tensor
    n_truncated: int
    latents: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)


_MEMO: dict[tuple, _Entry] = {}


def clear_pooled_cache() -> None:
    """Forget every memoised pass (frees the pooled latents)."""
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
def _encode_pooled(
    sae: SAE, rows: torch.Tensor, seg_matrix: torch.Tensor, counts: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Mean over each segment of sae.encode(row) for the rows of a batch -> [n_texts, d_sae] (CPU float32)."""
    device = sae.W_enc.device
    dtype = sae.W_enc.dtype
    seg_matrix = seg_matrix.to(device)
    out = torch.zeros(seg_matrix.shape[0], sae.cfg.d_sae, dtype=torch.float32, device=device)
    for start in range(0, rows.shape[0], chunk):
        z = sae.encode(rows[start : start + chunk].to(device, dtype)).float()
        out += seg_matrix[:, start : start + chunk] @ z
    return (out / counts.to(device).clamp(min=1)[:, None].float()).cpu()


def _segment_matrix(seg: torch.Tensor, n_rows: int) -> torch.Tensor:
    """[n_rows, len(seg)] 0/1 matrix summing rows into their segments (a matmul; index_add_ is slow per row on CPU)."""
    m = torch.zeros(n_rows, len(seg), dtype=torch.float32)
    m[seg, torch.arange(len(seg))] = 1.0
    return m


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
    """Pooled residual and signed SAE latents for `texts` (one model pass for all SAEs; memoised)."""
    adapter = ctx.adapter
    key = (id(adapter), ctx.model_key, ctx.layer, dataset, len(texts), seed, texts_digest(texts), context_length)
    digests = {sid: sae_digest(sae) for sid, sae in saes.items()}
    entry = _MEMO.get(key)
    if entry is not None and entry.adapter is not adapter:
        entry = None
    missing = {sid: sae for sid, sae in saes.items() if entry is None or (sid, digests[sid]) not in entry.latents}
    if entry is None or missing:
        pooled_x, n_tokens, n_truncated, latents = _run_pass(
            ctx, missing, texts, context_length, batch_tokens, sae_batch_tokens, desc, dataset, need_model=entry is None
        )
        if entry is None:
            entry = _Entry(adapter=adapter, model=pooled_x, n_tokens=n_tokens, n_truncated=n_truncated)
        for sid, lat in latents.items():
            entry.latents[(sid, digests[sid])] = lat
        _MEMO[key] = entry
    return PooledActivations(
        model=entry.model,
        latents={sid: entry.latents[(sid, digests[sid])] for sid in saes},
        n_tokens=entry.n_tokens,
        n_truncated=entry.n_truncated,
    )


def _run_pass(
    ctx: EvalContext,
    saes: dict[str, SAE],
    texts: Sequence[str],
    context_length: int,
    batch_tokens: int,
    sae_batch_tokens: int,
    desc: str,
    dataset: str,
    need_model: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, int, dict[str, torch.Tensor]]:
    adapter = ctx.adapter
    if len(texts) == 0:
        raise UserError(f"dataset {dataset!r} has no texts to evaluate on")
    ids, n_truncated = tokenize_texts(adapter.tokenizer, texts, context_length)
    pad_id = pad_token_id_of(adapter.tokenizer)  # = ModelAdapter.pad_token_id; stand-ins need only a tokenizer
    n = len(texts)
    pooled_x: torch.Tensor | None = None
    n_tokens = torch.zeros(n, dtype=torch.long)
    latents = {sid: torch.zeros(n, sae.cfg.d_sae, dtype=torch.float32) for sid, sae in saes.items()}
    groups = length_batches([len(i) for i in ids], max_tokens=batch_tokens, longest_first=True)
    what = "model" + (f" + {len(saes)} SAE(s)" if saes else "")
    for group in tqdm(groups, desc=f"{desc}: {dataset} ({n} texts, {what})", unit="batch"):
        input_ids, mask = pad_sequences([ids[i] for i in group], pad_id, side="right")
        acts = adapter.activations(input_ids, ctx.layer, attention_mask=mask).float().cpu()
        valid = pooled_positions(adapter.tokenizer, input_ids, mask)
        counts = valid.sum(1)
        rows = acts[valid]
        seg = valid.nonzero()[:, 0]
        index = torch.tensor(group, dtype=torch.long)
        n_tokens[index] = counts
        seg_matrix = _segment_matrix(seg, len(group))
        if need_model:
            if pooled_x is None:
                pooled_x = torch.zeros(n, acts.shape[-1], dtype=torch.float32)
            summed = seg_matrix @ rows
            pooled_x[index] = summed / counts.clamp(min=1)[:, None].float()
        for sid, sae in saes.items():
            latents[sid][index] = _encode_pooled(sae, rows, seg_matrix, counts, sae_batch_tokens)
    return pooled_x, n_tokens, n_truncated, latents


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
