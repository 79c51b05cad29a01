"""Unlearning (sae_bench methodology): clamp the SAE latents most specific to a forget set against the sign
they fire with, and measure the forget-set accuracy drop under a bound on retain-set accuracy; offline, on
knowledge the model demonstrably has."""
