"""Scores of sampled dialogue responses against their reference (Zhao et al. 2017 / Zhu et al.
2020 protocol): sacrebleu's BLEU-1..4, Zhao's BLEU (NLTK), A/E/G-bow, distinct-n, the
degenerate rate, and precision (mean) / recall (max) over the K samples of a context.

What each metric is (definitions, which tokens count, the scores of empty samples) is written
once, in :data:`eval.protocol.PROTOCOL` (keys ``bleu``, ``zhao_bleu``, ``a_bow``, ``e_bow``,
``g_bow``, ``bow_tokens``, ``distinct``, ``degenerate_rate``, ``precision_recall``), which every
result JSON carries; this module implements it. :func:`bleu_scores` computes the n-gram
statistics once up to order 4 and calls sacrebleu's own ``BLEU.compute_bleu`` for every order,
which equals ``sentence_score`` of the n-th metric (checked in the tests).

Latent-variable diagnostics (active units, mutual information, KL bounds) are in
:mod:`eval.latent`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams

MAX_BLEU_ORDER = 4


class BleuSettings(TypedDict):
    tokenize: str
    smooth_method: str
    effective_order: bool


BLEU_SETTINGS: BleuSettings = {"tokenize": "none", "smooth_method": "exp", "effective_order": True}

Tokens = Sequence[str]


# --------------------------------------------------------------------------------------- BLEU
@functools.cache
def sacrebleu_metric(order: int) -> BLEU:
    """The sacrebleu metric object for BLEU-``order`` under this protocol."""
    return BLEU(max_ngram_order=order, **BLEU_SETTINGS)


def sentence_bleu(hypothesis: Tokens, reference: Tokens, order: int = MAX_BLEU_ORDER) -> float:
    """BLEU-``order`` (0..100) of one hypothesis against one reference, via sacrebleu directly."""
    return sacrebleu_metric(order).sentence_score(" ".join(hypothesis), [" ".join(reference)]).score


class BleuReference:
    """A reference's n-gram counts, reused for every sample scored against it."""

    def __init__(self, reference: Tokens, max_order: int = MAX_BLEU_ORDER):
        self.max_order = max_order
        self.ngrams, self.length = extract_all_word_ngrams(" ".join(reference), 1, max_order)

    def scores(self, hypothesis: Tokens) -> list[float]:
        """``[BLEU-1, ..., BLEU-max_order]`` (0..100) of ``hypothesis`` against the reference."""
        hyp_ngrams, hyp_len = extract_all_word_ngrams(" ".join(hypothesis), 1, self.max_order)
        correct = [0] * self.max_order
        total = [0] * self.max_order
        for ngram, count in hyp_ngrams.items():
            n = len(ngram) - 1
            total[n] += count
            if ngram in self.ngrams:
                correct[n] += min(count, self.ngrams[ngram])
        return [
            BLEU.compute_bleu(
                correct[:n],
                total[:n],
                hyp_len,
                self.length,
                smooth_method=BLEU_SETTINGS["smooth_method"],
                effective_order=BLEU_SETTINGS["effective_order"],
                max_ngram_order=n,
            ).score
            for n in range(1, self.max_order + 1)
        ]


def bleu_scores(
    hypothesis: Tokens, reference: Tokens, max_order: int = MAX_BLEU_ORDER
) -> list[float]:
    """``[BLEU-1, ..., BLEU-max_order]`` of one hypothesis against one reference."""
    return BleuReference(reference, max_order).scores(hypothesis)


ZHAO_BLEU_WEIGHTS = {"zhao_bleu3": (1 / 3,) * 3, "zhao_bleu4": (1 / 4,) * 4}
_ZHAO_SMOOTHING = SmoothingFunction().method7


def zhao_bleu(hypothesis: Tokens, reference: Tokens, weights: Sequence[float]) -> float:
    """NLTK sentence BLEU x100 as Zhao et al.'s evaluation calls it (module docstring)."""
    try:
        score = nltk_sentence_bleu(
            [list(reference)], list(hypothesis), weights, smoothing_function=_ZHAO_SMOOTHING
        )
    except (ZeroDivisionError, ValueError, KeyError):  # Zhao's code counts such a sample as 0
        return 0.0
    return 100.0 * float(score)


def is_degenerate(tokens: Tokens) -> bool:
    """A token three times in a row, or any 3-gram three times (module docstring)."""
    if any(tokens[i] == tokens[i + 1] == tokens[i + 2] for i in range(len(tokens) - 2)):
        return True
    return any(c >= 3 for c in Counter(ngrams(tokens, 3)).values())


# ------------------------------------------------------------------------- embedding metrics
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0 if either vector is zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def extrema_vector(vectors: np.ndarray) -> np.ndarray:
    """Per dimension the value of largest absolute value over the rows (ties: the positive one)."""
    vmax, vmin = vectors.max(axis=0), vectors.min(axis=0)
    return np.where(np.abs(vmin) <= vmax, vmax, vmin)


def greedy_match(a_unit: np.ndarray, b_unit: np.ndarray) -> float:
    """Symmetric greedy matching of two sentences given their unit-normalised word vectors."""
    if len(a_unit) == 0 or len(b_unit) == 0:
        return 0.0
    sims = a_unit @ b_unit.T
    return float((sims.max(axis=1).mean() + sims.max(axis=0).mean()) / 2.0)


def split_for_lookup(token: str) -> list[str]:
    """Pieces of a token unknown to the word vectors, split like GloVe's PTB tokenizer."""
    if token.endswith("n't") and len(token) > 3:
        return [token[:-3], "n't"]
    i = token.rfind("'")
    if i > 0:
        return [token[:i], token[i:]]
    parts = [p for p in token.split("-") if p]
    return parts if parts != [token] else []


@dataclass
class SentenceVectors:
    """What the bag-of-words metrics need from one sentence."""

    average: np.ndarray | None  # None: no token with a vector
    extrema: np.ndarray | None
    unit: np.ndarray  # [k, d] unit-normalised vectors of its tokens (zero vectors left out)


class EmbeddingScorer:
    """A-bow / E-bow / G-bow similarities with a gensim ``KeyedVectors``."""

    def __init__(self, keyed_vectors, split_oov: bool = True):
        self.kv = keyed_vectors
        self.split_oov = split_oov
        self.dim = int(keyed_vectors.vector_size)
        self._rows: dict[str, list[int]] = {}

    def rows(self, token: str) -> list[int]:
        """Rows of ``kv.vectors`` standing for ``token`` (empty if it has no vector)."""
        cached = self._rows.get(token)
        if cached is None:
            cached = self._resolve(token, depth=0)
            self._rows[token] = cached
        return cached

    def _resolve(self, token: str, depth: int) -> list[int]:
        index = self.kv.key_to_index.get(token)
        if index is not None:
            return [index]
        if not self.split_oov or depth > 3:
            return []
        return [r for piece in split_for_lookup(token) for r in self._resolve(piece, depth + 1)]

    def coverage(self, sentences: Iterable[Tokens]) -> float:
        """Fraction of tokens with at least one vector (after splitting)."""
        hit = total = 0
        for s in sentences:
            for t in s:
                total += 1
                hit += bool(self.rows(t))
        return hit / total if total else 1.0

    def sentence(self, tokens: Tokens) -> SentenceVectors:
        rows = [r for t in tokens for r in self.rows(t)]
        if not rows:
            return SentenceVectors(None, None, np.zeros((0, self.dim)))
        vecs = np.asarray(self.kv.vectors[rows], dtype=np.float64)
        norms = np.linalg.norm(vecs, axis=1)
        unit = vecs[norms > 0] / norms[norms > 0, None]
        return SentenceVectors(vecs.mean(axis=0), extrema_vector(vecs), unit)

    def compare(self, hyp: SentenceVectors, ref: SentenceVectors) -> tuple[float, float, float]:
        """(A-bow, E-bow, G-bow) cosines in [-1, 1]; all 0 if a sentence has no vector."""
        if hyp.average is None or ref.average is None or hyp.extrema is None or ref.extrema is None:
            return 0.0, 0.0, 0.0  # (average and extrema are None together)
        return (
            cosine(hyp.average, ref.average),
            cosine(hyp.extrema, ref.extrema),
            greedy_match(hyp.unit, ref.unit),
        )

    def similarities(self, hypothesis: Tokens, reference: Tokens) -> tuple[float, float, float]:
        return self.compare(self.sentence(hypothesis), self.sentence(reference))


# -------------------------------------------------------------------------------- diversity
def ngrams(tokens: Tokens, n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sentences: Iterable[Tokens], n: int) -> float:
    """Distinct n-grams / all n-grams over the sentences pooled (0 if there is no n-gram)."""
    counts: Counter = Counter()
    for s in sentences:
        counts.update(ngrams(s, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def precision_recall(scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, max) of one context's per-sample scores."""
    if len(scores) == 0:
        raise ValueError("a context needs at least one sample")
    return float(np.mean(scores)), float(np.max(scores))


# ------------------------------------------------------------------------------ accumulator
BOW_NAMES = ("a_bow", "e_bow", "g_bow")
DISTINCT_ORDERS = (1, 2)


def metric_names(max_bleu_order: int = MAX_BLEU_ORDER) -> list[str]:
    names = [f"bleu{n}_{k}" for n in range(1, max_bleu_order + 1) for k in ("p", "r")]
    names += [f"{z}_{k}" for z in ZHAO_BLEU_WEIGHTS for k in ("p", "r")]
    names += [f"{b}_{k}" for b in BOW_NAMES for k in ("p", "r")]
    names += [f"intra_distinct{n}" for n in DISTINCT_ORDERS]
    names += [f"inter_distinct{n}" for n in DISTINCT_ORDERS]
    names += ["degenerate_rate", "one_token_rate"]
    return names


class ResponseMetrics:
    """Accumulates the per-context metrics over a corpus.

    ``add(samples, reference)`` scores one context (its K sampled responses against the
    reference) and returns that context's scores; ``result()`` averages over the contexts.
    Without an :class:`EmbeddingScorer` the bag-of-words metrics are ``None``.
    """

    def __init__(
        self, embeddings: EmbeddingScorer | None = None, max_bleu_order: int = MAX_BLEU_ORDER
    ):
        self.embeddings = embeddings
        self.max_bleu_order = max_bleu_order
        self.contexts = 0
        self._sums: dict[str, float] = {}
        self._inter: dict[int, Counter[tuple[str, ...]]] = {n: Counter() for n in DISTINCT_ORDERS}

    def add(self, samples: Sequence[Tokens], reference: Tokens) -> dict[str, float]:
        if len(samples) == 0:
            raise ValueError("a context needs at least one sample")
        scores: dict[str, float] = {}
        bleu_ref = BleuReference(reference, self.max_bleu_order)
        per_sample = np.array([bleu_ref.scores(s) for s in samples])  # [K, orders]
        for n in range(1, self.max_bleu_order + 1):
            p, r = precision_recall(per_sample[:, n - 1])
            scores[f"bleu{n}_p"], scores[f"bleu{n}_r"] = p, r
        for name, weights in ZHAO_BLEU_WEIGHTS.items():
            p, r = precision_recall([zhao_bleu(s, reference, weights) for s in samples])
            scores[f"{name}_p"], scores[f"{name}_r"] = p, r
        scores["degenerate_rate"] = float(np.mean([is_degenerate(s) for s in samples]))
        scores["one_token_rate"] = float(np.mean([len(s) == 1 for s in samples]))
        if self.embeddings is not None:
            ref_vec = self.embeddings.sentence(reference)
            bow = np.array(
                [self.embeddings.compare(self.embeddings.sentence(s), ref_vec) for s in samples]
            )
            for j, name in enumerate(BOW_NAMES):
                p, r = precision_recall(bow[:, j] * 100.0)
                scores[f"{name}_p"], scores[f"{name}_r"] = p, r
        for n in DISTINCT_ORDERS:
            scores[f"intra_distinct{n}"] = distinct_n(samples, n)
            for s in samples:
                self._inter[n].update(ngrams(s, n))
        for k, v in scores.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self.contexts += 1
        return scores

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in metric_names(self.max_bleu_order):
            if name.startswith("inter_distinct"):
                counts = self._inter[int(name[-1])]
                total = sum(counts.values())
                out[name] = len(counts) / total if total else 0.0
            elif name in self._sums:
                out[name] = self._sums[name] / self.contexts
            else:
                out[name] = None  # no word vectors given, or no context yet
        return out
