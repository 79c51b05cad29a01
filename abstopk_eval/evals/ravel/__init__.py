"""RAVEL (sae_bench methodology): disentanglement of entity attributes by interchange interventions in SAE
latent space, on offline real entity data the model demonstrably knows; sign-correct for signed latents."""
