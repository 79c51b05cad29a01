"""Which SAEs have signed latents (a latent fires with either sign), as the variant registry declares it."""

from __future__ import annotations

from sae_lens import SAE

from abstopk_eval.saes.variants import VARIANTS


def signed_architectures() -> frozenset[str]:
    """sae_lens architectures exported by signed variants (registration keeps this unambiguous)."""
    return frozenset(spec.architecture for spec in VARIANTS.values() if spec.signed)


def has_signed_latents(sae: SAE) -> bool:
    """True for SAEs whose architecture a signed variant exports (the AbsTopK family): latents keep their sign."""
    return sae.cfg.architecture() in signed_architectures()
