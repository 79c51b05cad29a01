"""SAE architectures: sae_lens classes plus the batch-level AbsTopK this project registers."""

from abstopk_eval.saes import batch_abstopk as _batch_abstopk  # noqa: F401  (registers `batch_abstopk`)
