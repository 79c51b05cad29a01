"""Which SAE architectures have signed latents (a latent fires with either sign)."""

from __future__ import annotations

from sae_lens import SAE

from abstopk_eval.saes.batch_abstopk import ARCHITECTURE as BATCH_ABSTOPK

SIGNED_ARCHITECTURES = frozenset({"abstopk", BATCH_ABSTOPK})


def has_signed_latents(sae: SAE) -> bool:
    """True for the AbsTopK family, whose latents keep the sign of their pre-activation."""
    return sae.cfg.architecture() in SIGNED_ARCHITECTURES
