"""Feature absorption on the first-letter task (SAEBench's methodology), offline and correct for signed latents.

Methodology (sae_bench 0.6.0 `evals/absorption`: Chanin et al., "A is for Absorption", with Demian Till's
absorption fraction):

1. Words: single-token words of the tokenizer's own vocabulary (text of the token: ASCII letters only, by default
   with a leading space, lowercase and at least 2 letters; `require_leading_space=False, lowercase_only=False,
   min_word_letters=1` is sae_bench's `get_alpha_tokens` filter). At most `n_words` of them (seeded), split
   80/20 into train and test words.
2. Prompts: sae_bench's ICL prompt "\\n{ex} has the first letter: E\\n...\\n{word} has the first letter:" with
   `max_icl_examples` examples from the same split (never the word itself). The activation is the residual
   stream after block `ctx.layer` at the word's own token.
3. Ground-truth probe: one-vs-rest logistic regression per letter on the model's activations, trained with
   sae_bench's `train_multi_probe` (Adam, BCE with pos_weight) and its settings; its test F1 per letter gates
   which letters are evaluated (`min_GT_probe_f1`, `min_feats_for_eval`), and its true positives on the test
   words are where absorption is measured.
4. k-sparse probing on the SAE latents: an L1-regularised multi-probe on all latents ranks them per letter;
   for k = 1..max_k_value a logistic regression (sklearn, class-balanced) on the top-k latents gives a test F1;
   the letter's main latents are the top-k set reached while F1 keeps rising by more than `f1_jump_threshold`.
5. Absorption on each true positive: the probe projection `x . p` (p the unit probe direction) is compared with
   the main latents' contribution along p; the absorption fraction credits up to 3 other probe-aligned latents
   with the shortfall, and full absorption means the main latents are silent while one other latent carries
   >= 40% of the projection. Per letter: mean fraction and full-absorption rate over the true positives; the
   reported scores are means (and standard deviations) over the evaluated letters, plus
   `one_minus_absorption = 1 - mean_absorption_fraction_score`.

Deviations from sae_bench, each marked `# DEVIATION` where it is made:

- Sign correctness (the reason for this module). sae_bench assumes z >= 0. Here a latent is *active* when
  z != 0 (sae_bench: `activation < EPS` means silent; here `|z| < EPS`). A latent's contribution along the probe
  is `z_i * (W_dec[i] . p)`; its alignment with the probe is the cosine between its contribution `z_i W_dec[i]`
  and p, `sign(z_i) * cos(W_dec[i], p)` (sae_bench: `cos(W_dec[i], p)`, which flips when a latent is negated).
  The main latents are ranked by `w_i * s_i`, the L1 probe weight times the latent's orientation `s_i` on the
  letter's training words (sign of the sum of its activations there; if zero, over all training words; then the
  sign of its first non-zero value; the rule every evaluation shares, `abstopk_eval.evals.selection`),
  i.e. by |w_i| among latents the probe uses in the direction they fire (sae_bench: `topk(w)`, which misses every
  latent that encodes the letter with negative activations). Negating one latent (encoder column, encoder bias,
  decoder row) therefore changes no number here. For non-negative SAEs `s_i = +1`, `sign(z_i) = 1` wherever
  z_i != 0, and every rule reduces to sae_bench's exactly (tests check this against sae_bench's own code).
- `z_i * (W_dec[i] . p)` instead of sae_bench's `z_i * cos(W_dec[i], p)`: the same for unit-norm decoder rows
  (every SAE this package trains), and the actual projection of the reconstruction otherwise.
- The L1 latent probe is trained on the latents divided by their mean L2 norm (one scalar per SAE): with
  sae_bench's fixed Adam settings, latents of this package's size (|z| ~ 100 on gemma-3-270m) make the ranking
  degenerate (k-sparse F1 ~ 0); a positive scalar changes no sign and no ratio.
- The L1 latent probe starts from zero weights (sae_bench: nn.Linear's random init) and shuffles with a seeded
  generator, so it is deterministic and exactly equivariant under negating a latent.
- Prompts are assembled from token ids (the word is exactly its vocabulary token; sae_bench tokenises the text
  and reads a fixed position -6, which presumes that). Several queries share one packed sequence
  (`queries_per_sequence`): the j-th query of a sequence sees the `max_icl_examples` examples plus the j-1 earlier
  queries with their answers, i.e. an ICL prompt with more examples, read before its own answer. This cuts the
  language-model cost ~8x on CPU; `queries_per_sequence=1` gives sae_bench's one-query prompts. Examples are
  drawn once per sequence rather than per prompt.
- Absorption is measured on the activations the probe classified (the test prompts), where sae_bench builds
  fresh prompts for the true-positive words in a second pass (its probe may then not fire on them).
- Language-model activations are computed once and shared by every SAE; sae_bench recomputes per SAE.
- A seeded sample of `n_words` words (sae_bench: every alphabetic token, ~140k on Gemma's vocabulary, one
  88-token prompt each: hours on a CPU).
- Too few letters with a good probe is a `UserError` (sae_bench prints a warning and stops), from
  `min_feats_for_eval=10` letters (sae_bench: 20); with a single evaluated letter the standard deviations are
  reported as 0 (sae_bench's `statistics.stdev` would raise).

Intervals (not in sae_bench): the unit is a true-positive test word of an evaluated letter (the words and the
ground-truth probe do not depend on the SAE); each letter's true positives are resampled with replacement
(`n_bootstrap`, seed `bootstrap_seed` + letter index, the same for every SAE), each letter's mean fraction and
full-absorption rate recomputed, then their means over letters and `one_minus_absorption`, with the main latents
and the evaluated letters fixed. `eval_result_unstructured.bootstrap_samples` keeps the samples (paired across
SAEs by the report), `bootstrap_ci95` the 95% percentile intervals.

Kept from sae_bench although it matters on models with a large mean activation: absorption is judged against
the raw probe projection `x . p`, which includes `b_dec . p`, a part no latent carries (on gemma-3-270m layer 9
it is of the same size as `x . p`, with the opposite sign). Both are recorded per letter in
`eval_result_unstructured`. sae_bench also warns that the eval is meant for models of >= 1B parameters and SAEs
of >= 16k latents.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sae_bench.evals.absorption.probing import train_multi_probe
from sae_bench.evals.absorption.prompting import first_letter
from sae_bench.evals.absorption.vocab import convert_tokens_to_string
from sae_lens import SAE
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from abstopk_eval.errors import UserError
from abstopk_eval.evals.absorption.eval_config import AbsorptionEvalConfig
from abstopk_eval.evals.absorption.eval_output import (
    AbsorptionEvalOutput,
    AbsorptionMetricCategories,
    SignedAbsorptionMeanMetrics,
    SignedAbsorptionResultDetail,
)
from abstopk_eval.evals.bootstrap import (
    INTERVALS_KEY,
    PAIRED_SAMPLES_KEY,
    paired_samples,
    resample_counts,
    sample_intervals,
    weighted_sums,
)
from abstopk_eval.evals.common import output_common
from abstopk_eval.evals.context import EvalContext, EvalSpec, register_eval
from abstopk_eval.evals.options import resolve_config
from abstopk_eval.evals.selection import orientation
from abstopk_eval.models.batching import pad_sequences
from abstopk_eval.models.pass_cache import cached_pass, tensor_digest
from abstopk_eval.models.sequence_start import sequence_start_of

EVAL_NAME = "absorption"
log = logging.getLogger("abstopk_eval")

LETTERS = "abcdefghijklmnopqrstuvwxyz"
EPS = 1e-8  # sae_bench feature_absorption_calculator.EPS: below this a main latent counts as silent
_SPACE_MARKERS = "\u2581\u0120 "  # SentencePiece '▁', byte-level BPE 'Ġ', a plain space


# ---------------------------------------------------------------------------------------------- words


def is_word(text: str, cfg: AbsorptionEvalConfig) -> bool:
    """The word filter: ASCII letters, optionally after one leading space (sae_bench's `get_alpha_tokens`),
    narrowed by `require_leading_space`, `lowercase_only` and `min_word_letters`."""
    if text.startswith(" "):
        core = text[1:]
    elif cfg.require_leading_space:
        return False
    else:
        core = text
    return (
        len(core) >= cfg.min_word_letters
        and core.isascii()
        and core.isalpha()
        and (core.islower() or not cfg.lowercase_only)
    )


def _filter_description(cfg: AbsorptionEvalConfig) -> str:
    parts = ["ASCII letters"]
    if cfg.require_leading_space:
        parts.append("leading space")
    if cfg.lowercase_only:
        parts.append("lowercase")
    parts.append(f">= {cfg.min_word_letters} letters")
    return ", ".join(parts)


def vocabulary_words(tokenizer: Any, cfg: AbsorptionEvalConfig) -> list[tuple[str, int]]:
    """(word text, token id) for every single-token word passing the filter, in token-id order.

    With `cfg.words`, those words instead (kept if they pass the filter and encode to exactly one token).
    """
    if cfg.words is not None:
        found = []
        for word in dict.fromkeys(cfg.words):
            ids = tokenizer.encode(word, add_special_tokens=False)
            if len(ids) == 1 and is_word(word, cfg):
                found.append((word, int(ids[0])))
        return found
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        raise UserError(
            "absorption needs the tokenizer's vocabulary (get_vocab) or an explicit word list "
            "(AbsorptionEvalConfig.words)"
        )
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    words: dict[str, int] = {}
    for token, idx in sorted(get_vocab().items(), key=lambda item: item[1]):
        core = token.lstrip(_SPACE_MARKERS)
        if idx in special or not (core.isascii() and core.isalpha()):  # cheap pre-filter on the raw token
            continue
        text = convert_tokens_to_string(token, tokenizer)  # sae_bench's conversion (with its Mistral fix)
        if is_word(text, cfg) and text not in words:
            words[text] = int(idx)
    return list(words.items())


def letter_index(word: str) -> int:
    return LETTERS.index(word.strip()[0].lower())


# ---------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class _PromptPieces:
    """Token ids of the prompt pieces, so that every word is exactly its vocabulary token."""

    start: list[int]  # the start token (models.sequence_start) + the separator sae_bench prepends to the first example
    prefix: list[int]  # template text before the word (usually empty)
    line_end: dict[int, list[int]]  # letter -> template text after the word + answer + separator
    word_pos_from_end: int  # the word's position counted from the end of a one-query prompt (sae_bench: -6)


def _prompt_pieces(tokenizer: Any, cfg: AbsorptionEvalConfig, separator: str = "\n") -> _PromptPieces:
    if cfg.prompt_template.count("{word}") != 1:
        raise UserError(f"absorption prompt_template must contain '{{word}}' once, got {cfg.prompt_template!r}")
    before, after = cfg.prompt_template.split("{word}")

    def enc(text: str) -> list[int]:
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)] if text else []

    line_end = {i: enc(after + first_letter(letter) + separator) for i, letter in enumerate(LETTERS)}
    return _PromptPieces(
        start=sequence_start_of(tokenizer).prepend(enc(separator)),
        prefix=enc(before),
        line_end=line_end,
        word_pos_from_end=-(len(enc(after)) + 1),
    )


@dataclass
class _Sequence:
    ids: list[int]
    queries: list[tuple[int, int]]  # (row in the split, position of the word token)


def build_sequences(
    token_ids: Sequence[int],
    letters: Sequence[int],
    pieces: _PromptPieces,
    cfg: AbsorptionEvalConfig,
    rng: random.Random,
) -> list[_Sequence]:
    """Packed ICL sequences over one split: `max_icl_examples` examples, then `queries_per_sequence` queries."""
    n = len(token_ids)
    order = rng.sample(range(n), n)
    sequences = []
    for start in range(0, n, cfg.queries_per_sequence):
        group = order[start : start + cfg.queries_per_sequence]
        in_group = set(group)
        others = [i for i in range(n) if i not in in_group]  # no contamination: a query is never an example
        examples = rng.sample(others, min(cfg.max_icl_examples, len(others)))
        ids = list(pieces.start)
        for i in examples:
            ids += pieces.prefix + [token_ids[i]] + pieces.line_end[letters[i]]
        queries = []
        for j, i in enumerate(group):
            ids += pieces.prefix
            queries.append((i, len(ids)))
            ids.append(token_ids[i])
            if j + 1 < len(group):  # tokens after the last query's word cannot affect its activation
                ids += pieces.line_end[letters[i]]
        sequences.append(_Sequence(ids, queries))
    return sequences


def collect_activations(
    adapter: Any, layer: int, sequences: list[_Sequence], n_rows: int, batch_size: int, pad_id: int, desc: str
) -> torch.Tensor:
    """Activation at every query's word token, as rows [n_rows, d_model] (float32, CPU); SAE-independent, so
    stored in the adapter's pass cache (`models.pass_cache`) where it has one, keyed by the sequences' ids, the
    query positions and the batching."""
    queries = torch.tensor([q for s in sequences for q in s.queries], dtype=torch.long)
    key = {
        "ids": tensor_digest(*(torch.tensor(s.ids, dtype=torch.long) for s in sequences)),
        "queries": tensor_digest(queries),
        "n_rows": n_rows,
        "batch_size": batch_size,
        "pad_id": pad_id,
    }
    build = lambda: {"rows": _collect_activations(adapter, layer, sequences, n_rows, batch_size, pad_id, desc)}  # noqa: E731
    return cached_pass(adapter, "absorption-rows", layer, key, build)["rows"]


@torch.no_grad()
def _collect_activations(
    adapter: Any, layer: int, sequences: list[_Sequence], n_rows: int, batch_size: int, pad_id: int, desc: str
) -> torch.Tensor:
    out: torch.Tensor | None = None
    for start in tqdm(range(0, len(sequences), batch_size), desc=desc, unit="batch", leave=False):
        batch = sequences[start : start + batch_size]
        ids, mask = pad_sequences([s.ids for s in batch], pad_id, side="right")
        acts = adapter.activations(ids, layer, attention_mask=mask).float().cpu()
        if out is None:
            out = torch.zeros((n_rows, acts.shape[-1]), dtype=torch.float32)
        for b, s in enumerate(batch):
            for row, pos in s.queries:
                out[row] = acts[b, pos]
    assert out is not None
    return out


# ---------------------------------------------------------------------------------------------- shared data


@contextmanager
def single_threaded() -> Iterator[None]:
    """One torch / BLAS thread: for the many tiny steps of probe fitting, where extra threads only add
    synchronisation (and, on a shared CPU, spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class AbsorptionData:
    """Everything that does not depend on the SAE: words, activations, the ground-truth probe."""

    words_train: list[str]
    words_test: list[str]
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor  # letter index 0..25
    y_test: torch.Tensor
    letters: list[int]  # letters probed (present in both splits); row r of probe_w is letter letters[r]
    probe_w: torch.Tensor
    probe_b: torch.Tensor
    probe_f1: dict[int, float]
    evaluated: list[int]  # letters with probe F1 > min_GT_probe_f1 and at least one true positive
    true_positives: dict[int, torch.Tensor]  # letter -> rows of the test split
    n_filtered_words: int
    word_pos_from_end: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def probe_direction(self, letter: int) -> torch.Tensor:
        w = self.probe_w[self.letters.index(letter)]
        return w / w.norm()


def train_letter_probe(
    x: torch.Tensor, targets: torch.Tensor, cfg: AbsorptionEvalConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """sae_bench's ground-truth probe: `train_multi_probe` with its `train_and_save_probes` settings."""
    with single_threaded(), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(cfg.random_seed)
        probe = train_multi_probe(
            x,
            targets,
            num_probes=targets.shape[1],
            batch_size=cfg.probe_batch_size,
            num_epochs=cfg.probe_num_epochs,
            lr=cfg.probe_lr,
            weight_decay=cfg.probe_weight_decay,
            show_progress=False,
            device=torch.device("cpu"),
        )
    return probe.weights.detach().float().clone(), probe.biases.detach().float().clone()


def prepare_absorption_data(ctx: EvalContext, cfg: AbsorptionEvalConfig) -> AbsorptionData:
    """Words, prompts, language-model activations (one pass for every SAE) and the ground-truth letter probe."""
    t0 = time.time()
    tokenizer = ctx.adapter.tokenizer
    found = vocabulary_words(tokenizer, cfg)
    source = "the given word list" if cfg.words is not None else f"the {ctx.model_key} tokenizer vocabulary"
    if len(found) < cfg.min_words:
        raise UserError(
            f"absorption: only {len(found)} single-token words of {source} pass the word filter "
            f"({_filter_description(cfg)}); need at least min_words={cfg.min_words}"
        )
    rng = random.Random(cfg.random_seed)
    words = rng.sample(found, min(cfg.n_words, len(found)))
    split = int(len(words) * cfg.train_test_fraction)
    train, test = words[:split], words[split:]
    pieces = _prompt_pieces(tokenizer, cfg)
    pad_id = ctx.adapter.pad_token_id

    def split_data(items: list[tuple[str, int]], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        letters = [letter_index(w) for w, _ in items]
        seqs = build_sequences([i for _, i in items], letters, pieces, cfg, rng)
        x = collect_activations(
            ctx.adapter, ctx.layer, seqs, len(items), cfg.llm_batch_size, pad_id, desc=f"absorption: {name} prompts"
        )
        return x, torch.tensor(letters, dtype=torch.long)

    log.info(
        "absorption: %d of %d filtered words (%d train / %d test), %d ICL examples, %d queries per sequence",
        len(words),
        len(found),
        len(train),
        len(test),
        cfg.max_icl_examples,
        cfg.queries_per_sequence,
    )
    x_train, y_train = split_data(train, "train")
    x_test, y_test = split_data(test, "test")
    t_lm = time.time() - t0

    present = [L for L in range(26) if (y_train == L).any() and (y_test == L).any()]
    if not present:
        raise UserError("absorption: no first letter occurs in both the train and the test words; raise n_words")
    targets = F.one_hot(y_train, 26)[:, present].float()
    probe_w, probe_b = train_letter_probe(x_train, targets, cfg)
    logits = x_test @ probe_w.T + probe_b
    probe_f1, evaluated, true_positives = {}, [], {}
    for r, L in enumerate(present):
        is_l = (y_test == L).numpy()
        probe_f1[L] = float(f1_score(is_l, (logits[:, r] > 0).numpy(), zero_division=0))
        tp = torch.nonzero((y_test == L) & (logits[:, r] > 0)).flatten()
        if probe_f1[L] > cfg.min_GT_probe_f1 and tp.numel() > 0:
            evaluated.append(L)
            true_positives[L] = tp
    log.info(
        "absorption: activations %.0fs; probe F1 > %.2f for %d of %d letters: %s",
        t_lm,
        cfg.min_GT_probe_f1,
        len(evaluated),
        len(present),
        " ".join(f"{LETTERS[L]}={probe_f1[L]:.2f}" for L in present),
    )
    if len(evaluated) < cfg.min_feats_for_eval:
        raise UserError(
            f"absorption: only {len(evaluated)} letters have a first-letter probe with test F1 > {cfg.min_GT_probe_f1} "
            f"on {ctx.model_key} layer {ctx.layer} (need min_feats_for_eval={cfg.min_feats_for_eval}): the model does "
            f"not encode spelling linearly there, or there are too few words (n_words={cfg.n_words})"
        )
    return AbsorptionData(
        words_train=[w for w, _ in train],
        words_test=[w for w, _ in test],
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        letters=present,
        probe_w=probe_w,
        probe_b=probe_b,
        probe_f1=probe_f1,
        evaluated=evaluated,
        true_positives=true_positives,
        n_filtered_words=len(found),
        word_pos_from_end=pieces.word_pos_from_end,
        seconds=time.time() - t0,
        extra={"language_model_seconds": t_lm, "word_source": source},
    )


# ---------------------------------------------------------------------------------------------- per SAE


@torch.no_grad()
def encode_all(sae: SAE, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    dev, dtype = sae.W_enc.device, sae.W_enc.dtype
    return torch.cat(
        [sae.encode(x[s : s + batch_size].to(dev, dtype)).float().cpu() for s in range(0, x.shape[0], batch_size)]
    )


def train_l1_latent_probe(
    z: torch.Tensor,
    targets: torch.Tensor,
    cfg: AbsorptionEvalConfig,
    lr: float = 0.01,
    end_lr: float = 1e-5,
    l2_decay: float = 1e-6,
) -> torch.Tensor:
    """sae_bench's `train_sparse_multi_probe` (BCE with pos_weight + l1 * mean_probe ||w||_1, Adam, exponential
    decay from lr to end_lr over the epochs), returning the weights [n_probes, d_sae].

    Latents never active on these words keep weight 0 exactly (zero init, zero gradient), so only the active
    columns are trained.
    """
    n, d = z.shape
    active = torch.nonzero((z != 0).any(0)).flatten()
    za = z[:, active]
    # DEVIATION: zero init (sae_bench: nn.Linear's random init) and a seeded shuffle: deterministic, and exactly
    # equivariant when a latent is negated (its gradient, Adam moments and weight all flip sign).
    w = torch.zeros(targets.shape[1], active.numel(), requires_grad=True)
    b = torch.zeros(targets.shape[1], requires_grad=True)
    n_pos = targets.sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(n - n_pos) / n_pos)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=l2_decay)
    epochs = cfg.k_sparse_probe_num_epochs
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(math.log(end_lr / lr) / epochs))
    gen = torch.Generator().manual_seed(cfg.random_seed)
    with single_threaded(), torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.k_sparse_probe_batch_size):
                idx = perm[s : s + cfg.k_sparse_probe_batch_size]
                loss = loss_fn(za[idx] @ w.T + b, targets[idx]) + cfg.k_sparse_probe_l1_decay * w.abs().sum(-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    full = torch.zeros(targets.shape[1], d)
    full[:, active] = w.detach()
    return full


def latent_orientation(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """s[letter, i] in {-1, +1}: the sign latent i takes on the letter's training words (the shared rule,
    `abstopk_eval.evals.selection.orientation`). Always +1 for non-negative latents."""
    s = orientation(z.double().numpy(), targets.double().numpy())
    return torch.from_numpy(s).to(z.dtype)


def select_main_latent_candidates(w: torch.Tensor, orientation: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k latents per probe by w * s (sign-aware |w|). DEVIATION: sae_bench ranks by `topk(w)` ("not abs()
    because we only want features that directly predict the label"), which for a signed latent keeps only those
    whose positive pole predicts the letter; w * s keeps that intent for both signs and equals w when s = +1."""
    return (w * orientation).topk(k, dim=-1).indices


def _k_sparse_f1(
    z_train: torch.Tensor, y_train: np.ndarray, z_test: torch.Tensor, y_test: np.ndarray, feats: torch.Tensor
) -> float:
    """sae_bench's k-sparse probe: class-balanced sklearn logistic regression on the chosen latents; test F1 of
    score > 0 (scored in float32 as sae_bench's KSparseProbe does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=500, class_weight="balanced").fit(z_train[:, feats].numpy(), y_train)
    score = z_test[:, feats] @ torch.tensor(clf.coef_[0]).float() + torch.tensor(clf.intercept_[0]).float()
    return float(f1_score(y_test, (score > 0).numpy(), zero_division=0))


def feature_splits(
    f1_by_k: Sequence[float], feats_by_k: Sequence[list[int]], f1_jump_threshold: float
) -> tuple[list[int], float]:
    """sae_bench's `add_feature_splits_to_metrics_df` rule: grow k while F1 rises by more than the threshold."""
    prev_best, split = -100.0, []
    for f1, feats in zip(f1_by_k, feats_by_k):
        if f1 > prev_best + f1_jump_threshold:
            prev_best, split = f1, feats
        else:
            break
    return split, prev_best


@torch.no_grad()
def absorption_scores(
    z: torch.Tensor,
    act_proj: torch.Tensor,
    dec_proj: torch.Tensor,
    dec_cos: torch.Tensor,
    main_ids: Sequence[int],
    cfg: AbsorptionEvalConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorption fraction and full absorption per word, as sae_bench's FeatureAbsorptionCalculator computes them.

    z: latents [n, d_sae] of the words; act_proj: `x . p` [n]; dec_proj: `W_dec[i] . p` [d_sae];
    dec_cos: `cos(W_dec[i], p)` [d_sae]; main_ids: the letter's main latents.
    """
    main = torch.as_tensor(list(main_ids), dtype=torch.long)
    # DEVIATION (sign): contribution z_i (W_dec[i] . p) (sae_bench z_i cos_i: equal for unit-norm rows) is invariant
    # under negating latent i; its alignment with p is sign(z_i) cos_i, not cos_i.
    proj = z * dec_proj
    aligned_cos = torch.sign(z) * dec_cos
    main_proj = proj[:, main].sum(-1)
    is_main = torch.zeros(z.shape[1], dtype=torch.bool)
    is_main[main] = True
    # potential absorbers: other latents whose contribution points along the probe (sae_bench: cos >= 0.1 and
    # z cos > 0, which for z >= 0 is the same set)
    candidate = ~is_main & (aligned_cos >= cfg.absorption_fraction_probe_cos_threshold) & (proj > 0)
    n_top = min(cfg.absorption_fraction_max_absorbing_latents, z.shape[1])
    absorbers = torch.where(candidate, proj, torch.zeros_like(proj)).topk(n_top, dim=-1).values.sum(-1)
    proportion = absorbers / act_proj
    absorbed = torch.minimum(absorbers, act_proj - main_proj)
    partial = (absorbed / (absorbed + main_proj)).clamp(0.0, 1.0)
    fraction = torch.where(
        (main_proj >= act_proj) | (proportion < cfg.probe_projection_proportion_threshold),
        torch.zeros_like(act_proj),
        torch.where(main_proj <= 0, torch.ones_like(act_proj), partial),
    )
    # full absorption by a single latent: the main latents are silent (DEVIATION: |z| < EPS, sae_bench z < EPS),
    # the top-projecting latent's contribution is aligned with p and carries enough of the projection
    silent = (z[:, main].abs() < EPS).all(-1)
    top = proj.topk(1, dim=-1).indices
    top_proj, top_cos = proj.gather(1, top).squeeze(1), aligned_cos.gather(1, top).squeeze(1)
    full = (
        silent
        & (top_cos >= cfg.full_absorption_probe_cos_threshold)
        & (act_proj >= 0)
        & (top_proj / act_proj >= cfg.probe_projection_proportion_threshold)
    )
    return fraction, full


@dataclass
class LetterResult:
    letter: int
    split_feats: list[int]
    f1_sparse: float
    f1_by_k: list[float]
    fractions: torch.Tensor
    full: torch.Tensor
    mean_act_proj: float = 0.0  # mean x . p over the true positives
    b_dec_proj: float = 0.0  # b_dec . p: part of x . p that no latent accounts for


def evaluate_sae(data: AbsorptionData, sae: SAE, cfg: AbsorptionEvalConfig) -> list[LetterResult]:
    """k-sparse probing and absorption of one SAE, for every evaluated letter."""
    z_train, z_test = encode_all(sae, data.x_train), encode_all(sae, data.x_test)
    targets = F.one_hot(data.y_train, 26)[:, data.letters].float()
    # DEVIATION: the L1 probe sees the latents divided by one positive scalar, their mean L2 norm on the training
    # words. sae_bench's fixed Adam lr (0.01) and L1 decay assume latents of moderate size; with this package's
    # SAEs on gemma-3-270m (|z| ~ 70-250, latent-vector norms ~ 600) the first steps saturate every logit and the
    # ranking degenerates to rare latents (k-sparse F1 ~ 0). One scalar keeps every sign and ratio, so the ranking
    # rule, its agreement with sae_bench for z >= 0 and the sign-flip equivariance are unchanged.
    scale = z_train.norm(dim=-1).mean().clamp_min(1e-12)
    w = train_l1_latent_probe(z_train / scale, targets, cfg)
    orientation = latent_orientation(z_train, targets)
    max_k = min(cfg.max_k_value, z_train.shape[1])
    candidates = {k: select_main_latent_candidates(w, orientation, k) for k in range(1, max_k + 1)}
    w_dec = sae.W_dec.detach().float().cpu()
    dec_norm = w_dec.norm(dim=-1).clamp_min(1e-8)
    results = []
    for L in data.evaluated:
        r = data.letters.index(L)
        y_tr, y_te = (data.y_train == L).numpy(), (data.y_test == L).numpy()
        feats_by_k = [candidates[k][r].tolist() for k in range(1, max_k + 1)]
        with single_threaded():
            f1_by_k = [_k_sparse_f1(z_train, y_tr, z_test, y_te, torch.tensor(f)) for f in feats_by_k]
        split, f1_sparse = feature_splits(f1_by_k, feats_by_k, cfg.f1_jump_threshold)
        p = data.probe_direction(L)
        dec_proj = w_dec @ p
        tp = data.true_positives[L]
        act_proj = data.x_test[tp] @ p
        fraction, full = absorption_scores(z_test[tp], act_proj, dec_proj, dec_proj / dec_norm, split, cfg)
        results.append(
            LetterResult(
                L,
                split,
                f1_sparse,
                f1_by_k,
                fraction,
                full,
                float(act_proj.mean()),
                float(sae.b_dec.detach().float().cpu() @ p),
            )
        )
    return results


# ---------------------------------------------------------------------------------------------- output


BOOTSTRAP_UNIT = "probe true-positive test word (resampled within its first letter)"


def bootstrap_counts(data: AbsorptionData, cfg: AbsorptionEvalConfig) -> dict[int, torch.Tensor]:
    """Per evaluated letter, [n_bootstrap, n_true_positives] resample counts of its true-positive test words
    (seed `bootstrap_seed` + letter index). They depend only on the words and the ground-truth probe, so every SAE
    uses the same resamples."""
    return {
        L: resample_counts(int(data.true_positives[L].numel()), cfg.n_bootstrap, cfg.bootstrap_seed + L)
        for L in data.evaluated
    }


def bootstrap_unit_keys(data: AbsorptionData) -> list[str]:
    """The bootstrap's units in order: each evaluated letter's true-positive test words."""
    return [f"{LETTERS[L]}\t{data.words_test[int(row)]}" for L in data.evaluated for row in data.true_positives[L]]


def absorption_samples(results: list[LetterResult], counts: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bootstrap samples [R] of the mean absorption scores: each letter's mean fraction and full-absorption rate
    over its resampled true positives (stratified: each letter keeps its count), then their mean over the letters,
    as the point estimates are computed; main latents and the evaluated letters stay fixed."""
    fractions, full = [], []
    for res in results:
        c = counts[res.letter]
        n = c.sum(1)
        fractions.append(weighted_sums(c, res.fractions.double()) / n)
        full.append(weighted_sums(c, res.full.double()) / n)
    mean_fraction = torch.stack(fractions).mean(0)
    return {
        "one_minus_absorption": 1.0 - mean_fraction,
        "mean_absorption_fraction_score": mean_fraction,
        "mean_full_absorption_score": torch.stack(full).mean(0),
    }


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _output(
    ctx: EvalContext,
    cfg: AbsorptionEvalConfig,
    data: AbsorptionData,
    sae_id: str,
    sae: SAE,
    results: list[LetterResult],
    seconds: float,
    counts: dict[int, torch.Tensor] | None = None,
) -> AbsorptionEvalOutput:
    counts = bootstrap_counts(data, cfg) if counts is None else counts
    record = paired_samples(
        BOOTSTRAP_UNIT, bootstrap_unit_keys(data), cfg.bootstrap_seed, absorption_samples(results, counts)
    )
    details = []
    for res in results:
        n_tp = int(res.fractions.numel())
        n_full = int(res.full.sum())
        details.append(
            SignedAbsorptionResultDetail(
                first_letter=LETTERS[res.letter],
                mean_absorption_fraction=float(res.fractions.double().sum()) / n_tp,
                full_absorption_rate=n_full / n_tp,
                num_full_absorption=n_full,
                num_probe_true_positives=n_tp,
                num_split_features=len(res.split_feats),
                split_feats=res.split_feats,
                f1_probe=data.probe_f1[res.letter],
                f1_sparse_sae=res.f1_sparse,
            )
        )
    fractions = [d.mean_absorption_fraction for d in details]
    full_rates = [d.full_absorption_rate for d in details]
    n_split = [float(d.num_split_features) for d in details]
    mean_fraction = statistics.mean(fractions)
    metrics = AbsorptionMetricCategories(
        mean=SignedAbsorptionMeanMetrics(
            mean_absorption_fraction_score=mean_fraction,
            mean_full_absorption_score=statistics.mean(full_rates),
            mean_num_split_features=statistics.mean(n_split),
            std_dev_absorption_fraction_score=_std(fractions),
            std_dev_full_absorption_score=_std(full_rates),
            std_dev_num_split_features=_std(n_split),
            one_minus_absorption=1.0 - mean_fraction,
            num_letters_evaluated=len(details),
        )
    )
    return AbsorptionEvalOutput(
        eval_config=cfg,
        eval_result_metrics=metrics,
        eval_result_details=details,
        eval_result_unstructured={
            "probe_f1": {LETTERS[L]: f1 for L, f1 in data.probe_f1.items()},
            "k_sparse_f1_by_k": {LETTERS[r.letter]: r.f1_by_k for r in results},
            # sae_bench measures absorption against x . p; b_dec . p is the part of it no latent can carry
            "mean_probe_projection": {LETTERS[r.letter]: r.mean_act_proj for r in results},
            "b_dec_probe_projection": {LETTERS[r.letter]: r.b_dec_proj for r in results},
            "n_filtered_words": data.n_filtered_words,
            PAIRED_SAMPLES_KEY: record,
            INTERVALS_KEY: sample_intervals(record),
            "n_train_words": len(data.words_train),
            "n_test_words": len(data.words_test),
            "shared_seconds": data.seconds,
            "sae_seconds": seconds,
            **data.extra,
        },
        **output_common(ctx, sae_id, sae),
    )


def run_absorption(
    ctx: EvalContext, saes: dict[str, SAE], config: AbsorptionEvalConfig | None = None
) -> dict[str, AbsorptionEvalOutput]:
    cfg = resolve_config(AbsorptionEvalConfig, ctx, EVAL_NAME, config)
    data = prepare_absorption_data(ctx, cfg)
    cfg = replace(
        cfg,
        prompt_token_pos=data.word_pos_from_end,
        dataset=(
            f"{len(data.words_train) + len(data.words_test)} of {data.n_filtered_words} single-token words "
            f"({_filter_description(cfg)}) of {data.extra['word_source']}"
        ),
    )
    outputs = {}
    counts = bootstrap_counts(data, cfg)
    for sae_id, sae in tqdm(saes.items(), desc="absorption: SAEs", unit="sae"):
        t0 = time.time()
        results = evaluate_sae(data, sae, cfg)
        outputs[sae_id] = _output(ctx, cfg, data, sae_id, sae, results, time.time() - t0, counts)
        m = outputs[sae_id].eval_result_metrics.mean
        log.info(
            "absorption %s: mean absorption fraction %.3f, full absorption %.3f, split features %.2f (%.0fs)",
            sae_id,
            m.mean_absorption_fraction_score,
            m.mean_full_absorption_score,
            m.mean_num_split_features,
            time.time() - t0,
        )
    return outputs


ABSORPTION = register_eval(
    EvalSpec(
        name=EVAL_NAME,
        config_cls=AbsorptionEvalConfig,
        output_cls=AbsorptionEvalOutput,
        description="SAEBench first-letter feature absorption (absorption fraction, full absorption, feature splits), "
        "sign-correct for signed latents, plus 1 - absorption",
        run=run_absorption,
    )
)
