"""Bidirectional features: does one signed latent carry both poles of a concept, or do two latents split it?"""
