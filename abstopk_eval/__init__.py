"""abstopk-eval: train and evaluate sparse autoencoders, correct for signed (AbsTopK) latents.

Entry points: `python -m abstopk_eval.run` (train + evaluate + report) and `python -m abstopk_eval.report`.
Import `abstopk_eval.saes` before `sae_lens.SAE.load_from_disk` on a `batch_abstopk` checkpoint.
"""

__version__ = "0.1.0"
