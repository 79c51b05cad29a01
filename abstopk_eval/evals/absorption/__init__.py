"""Feature absorption (SAEBench first-letter task), sign-correct for signed latents."""
