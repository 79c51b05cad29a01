"""Latent selection rules of the evaluations, oriented per latent so that signed latents are scored fairly.

sae_bench's selection rules assume z >= 0: "more active on the positive class" is "larger mean there". A signed
(AbsTopK) latent can carry a class in its sign, e.g. +a on the class and -a on the rest; a rule that reads
activity as |z| sees no difference there and drops it. Each rule here therefore

1. orients latent j by s_j = `orientation(z, target)` (the sign of its activations on the target rows), i.e.
   z'_j = s_j z_j and d'_j = s_j W_dec[j] (the same SAE: negating a latent's encoder column, encoder bias and
   decoder row is the identity map), so the oriented latent is non-negative on average on the target, and
2. applies sae_bench's rule to the oriented latents.

For a non-negative latent s_j = +1, so every rule is sae_bench's exactly (tests compare with sae_bench's own
functions); s_j flips when latent j is negated, so the oriented latent, hence every selection, is unchanged by
the negation. Rules that are already symmetric under z_j -> -z_j (|mean difference|, |effect|) are unchanged by the
orientation; it is applied anyway so that every rule reads the same way. Activity is z != 0 (either sign).

Used by TPP (`tpp_effects`), SCR (`scr_effects`), sparse probing (`top_k_by_abs_mean_diff`), both ablation
evaluations (`select_top_n`) and absorption (`orientation`, per letter).
"""

from __future__ import annotations

import numpy as np


def mean_diff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean of x over y == 1 minus mean over y == 0 (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x[y == 1].mean(0) - x[y == 0].mean(0)


def orientation(z: np.ndarray, target: np.ndarray) -> np.ndarray:
    """s_j in {-1, +1} per latent: the sign of latent j's sum over the target rows.

    `target` is a 0/1 vector over the rows of z ([n] -> s is [d]) or a 0/1 matrix of several targets ([n, C] -> s
    is [C, d]). Where the sum on the target is 0, the sign of the sum over all rows; where that is 0 too, the sign
    of the latent's first non-zero value; +1 for a latent that is 0 on every row. Every fallback flips with the
    latent, so s_j z_j is unchanged by negating latent j; a non-negative latent always gets +1.
    """
    z = np.asarray(z, dtype=np.float64)
    m = np.asarray(target, dtype=np.float64)
    single = m.ndim == 1
    m = m[:, None] if single else m
    s = np.sign(m.T @ z)
    s = np.where(s == 0, np.sign(z.sum(0)), s)
    first = z[(z != 0).argmax(0), np.arange(z.shape[1])] if z.shape[0] else np.zeros(z.shape[1])
    s = np.where(s == 0, np.sign(first), s)
    s = np.where(s == 0, 1.0, s)
    return s[0] if single else s


def tpp_effects(z: np.ndarray, y: np.ndarray, probe_weight: np.ndarray, rows_dec: np.ndarray) -> np.ndarray:
    """TPP attribution of each latent to a class probe (sae_bench's `get_effects_per_class_precomputed_acts`,
    `perform_scr=False`), on latents oriented towards the class (y == 1):

        effect_j = max(0, mean z'_j(class) - mean z'_j(rest)) * <w, d'_j>,   z'_j = s_j z_j,  d'_j = s_j d_j

    sae_bench clamps the raw mean difference at 0 ("only consider latents more active on the positive class").
    A latent that is +a on the class and -a on the rest is kept (mean difference 2a); a latent silent on the
    class (mean 0 there) has a non-positive oriented difference and effect 0, as a non-negative one does.
    """
    s = orientation(z, y == 1)
    gate = np.clip(mean_diff(np.asarray(z, dtype=np.float64) * s, y), 0.0, None)
    return gate * s * (rows_dec @ probe_weight)


def scr_effects(z: np.ndarray, y: np.ndarray, probe_weight: np.ndarray, rows_dec: np.ndarray) -> np.ndarray:
    """SCR attribution (sae_bench's `get_effects_per_class_precomputed_acts`, `perform_scr=True`):
    |mean difference x <w, d_j>|. Orienting multiplies both factors by s_j, so the oriented rule is this one."""
    return np.abs(mean_diff(z, y) * (rows_dec @ probe_weight))


def top_k_by_abs_mean_diff(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """sae_bench's `get_top_k_mean_diff_mask` (sparse probing): the k features whose class means differ most in
    magnitude, largest first (ties by index). |s_j * difference| = |difference|, so it needs no orientation."""
    diff = np.abs(mean_diff(x, y))
    return np.argsort(-diff, kind="stable")[:k]


def select_top_n(effects: np.ndarray, n: int) -> np.ndarray:
    """sae_bench's `select_top_n_features`: the n largest effects among the non-zero ones (fewer if fewer)."""
    nonzero = np.flatnonzero(effects != 0)
    k = min(n, len(nonzero))
    if k == 0:
        return nonzero[:0]
    order = np.argsort(-effects[nonzero], kind="stable")[:k]
    return nonzero[order]
