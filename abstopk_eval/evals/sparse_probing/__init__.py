"""Sparse probing (sae_bench methodology): probes on the top-k SAE latents by |mean difference|, offline data."""
