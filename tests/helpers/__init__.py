"""Shared test helpers; test modules import these and never each other.

- `tests.helpers.tokenizer`: `tiny_tokenizer(start="bos" | "eos" | "none")`, the one tiny HF tokenizer.
- `tests.helpers.models`: a tiny seeded model per architecture family (`TINY_BUILDERS`), `save_tiny_model`, the
  `TINY` model spec.
- `tests.helpers.context`: `make_eval_context`, the one way tests build an `EvalContext`; `random_tokens`.
- `tests.helpers.saes`: `random_sae`, `negate_latent`, raw external-checkpoint tensors.
- `tests.helpers.training`: a synthetic training set and its batch stream.
- `tests.helpers.knowledge`: a tiny model that "knows" facts (RAVEL, unlearning).

Session fixtures built on these (saved model folders per family, the registered `tiny-test` spec) are in
tests/conftest.py.
"""
