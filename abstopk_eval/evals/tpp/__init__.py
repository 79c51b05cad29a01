"""Targeted probe perturbation (TPP, sae_bench methodology) on offline multi-class datasets, sign-correct."""
