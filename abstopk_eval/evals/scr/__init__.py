"""Spurious correlation removal (SCR, sae_bench methodology) on an offline two-label dataset, sign-correct."""
