"""The paper's evaluation (``python -m eval.switchboard --protocol paper``).

Table 4 of Zhu et al. (2020) is what the multi-reference test routine of Fu et al.'s dialog code
prints (a fork of Zhao et al.'s kgCVAE code). This module computes the same scores on our data:
which contexts are scored, how references and samples are turned into tokens, BLEU-1..4 as NLTK
3.5's ``sentence_bleu`` with ``method7`` smoothing computes it, and the (cos + 1) / 2 bag-of-words
scores. Every rule, with the file and line of the public code it reproduces, and what still
differs, is written once in :data:`eval.protocol.PAPER_PROTOCOL` and
:data:`eval.protocol.PAPER_PROTOCOL_DIFFERENCES`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from eval.metrics import DISTINCT_ORDERS, is_degenerate, ngrams
from model.vocab import UNK

SAMPLES_PER_CONTEXT = 5
# backward_size 10: a window of 10 utterances, the last one the response.
CONTEXT_UTTERANCES = 9
# pad_to keeps 39 ids (<s> and 38 words) and the last one (</s>).
UTTERANCE_WORDS = 38
# (1, 0, 0, 0) ... (1/4,) * 4: four orders always, the later ones with weight 0.
BLEU_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0, 0.0, 0.0, 0.0),
    2: (1 / 2, 1 / 2, 0.0, 0.0),
    3: (1 / 3, 1 / 3, 1 / 3, 0.0),
    4: (1 / 4, 1 / 4, 1 / 4, 1 / 4),
}
SMOOTHING_K = 5  # SmoothingFunction(k=5), used by method4

Tokens = Sequence[str]


# ------------------------------------------------------------------------------ the examples
def is_scored(turn: int, turns: int) -> bool:
    """Whether the response at ``turn`` (0-based, among a dialog's ``turns`` utterances) is
    scored: the loader never makes the last utterance a response, and the test routine skips
    the first one (its context is the begin-of-dialog marker alone)."""
    return 1 <= turn <= turns - 2


def reference_tokens(tokens: Tokens, vocabulary: set[str] | dict) -> list[str]:
    """The reference as the script sees it: cut to 38 words, words outside the vocabulary
    replaced by ``<unk>`` (which then counts as a word)."""
    return [t if t in vocabulary else UNK for t in tokens[:UTTERANCE_WORDS]]


# -------------------------------------------------------------------------------------- BLEU
def _modified_precision(reference: Tokens, hypothesis: Tokens, n: int) -> tuple[int, int]:
    """(clipped matches, max(1, hypothesis n-grams)) for one reference."""
    counts = Counter(ngrams(hypothesis, n)) if len(hypothesis) >= n else Counter()
    ref_counts = Counter(ngrams(reference, n)) if len(reference) >= n else Counter()
    matches = sum(min(c, ref_counts[g]) for g, c in counts.items())
    return matches, max(1, sum(counts.values()))


def nltk35_sentence_bleu(reference: Tokens, hypothesis: Tokens, weights: Sequence[float]) -> float:
    """``nltk.translate.bleu_score.sentence_bleu([reference], hypothesis, weights,
    smoothing_function=SmoothingFunction().method7)`` as NLTK 3.5 computes it (0..1, can exceed
    1), raising where it raises (a one-word hypothesis: ``ZeroDivisionError`` in method4).

    The precisions are kept as exact fractions until smoothing turns them into floats, in the
    same order of operations as NLTK, so the values agree to the last bit."""
    counts = [_modified_precision(reference, hypothesis, n) for n in range(1, len(weights) + 1)]
    if counts[0][0] == 0:
        return 0.0
    hyp_len, ref_len = len(hypothesis), len(reference)
    # method4: a zero count becomes (i + k / ln(len)) / denominator ("i + 1 * k / ..." in NLTK:
    # the order index plus k / ln(len), which is what it computes).
    p: list = []
    for i, (matches, total) in enumerate(counts):
        if matches == 0 and hyp_len != 0:
            p.append((i + 1 * SMOOTHING_K / math.log(hyp_len)) / total)
        else:
            p.append(Fraction(matches, total))
    # method5: average each order with the (already smoothed) previous and the next one; the
    # order after the last is the unsmoothed precision of one order more.
    following = [*p, Fraction(*_modified_precision(reference, hypothesis, len(weights) + 1))]
    previous = p[0] + 1
    for i in range(len(p)):
        p[i] = (previous + p[i] + following[i + 1]) / 3
        previous = p[i]
    if hyp_len > ref_len:
        brevity = 1.0
    elif hyp_len == 0:
        brevity = 0.0
    else:
        brevity = math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(math.fsum(w * math.log(x) for w, x in zip(weights, p, strict=True)))


def paper_bleu(reference: Tokens, hypothesis: Tokens, order: int) -> float:
    """BLEU-``order`` x100 as the test routine scores a sample: 0 where NLTK raises."""
    try:
        return 100.0 * nltk35_sentence_bleu(reference, hypothesis, BLEU_WEIGHTS[order])
    except (ZeroDivisionError, ValueError):
        return 0.0


# ------------------------------------------------------------------------------- bag of words
class PaperBowScorer:
    """A-bow / E-bow as the test routine computes them: a word counts only if it is a key of the
    word-vector file as it is (no splitting, no lower-casing; ``<unk>`` usually has none)."""

    def __init__(self, keyed_vectors):
        self.kv = keyed_vectors

    def vectors(self, tokens: Tokens) -> np.ndarray | None:
        """The word vectors of the tokens that have one; None if none has."""
        rows = [self.kv.key_to_index[t] for t in tokens if t in self.kv.key_to_index]
        if not rows:
            return None
        return np.asarray(self.kv.vectors[rows], dtype=np.float64)

    @staticmethod
    def compare(reference: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
        """((cos + 1) / 2 of the mean vectors, the same of the extrema vectors), in [0, 1]."""
        out = []
        means = [reference.mean(axis=0), sample.mean(axis=0)]
        extrema = []
        for m in (reference, sample):
            high, low = m.max(axis=0), m.min(axis=0)
            extrema.append(np.where(np.abs(low) <= high, high, low))
        for a, b in (means, extrema):
            cos = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
            out.append((cos + 1.0) / 2.0)
        return out[0], out[1]


# ------------------------------------------------------------------------------ accumulator
PAPER_METRICS = [f"bleu{n}_{k}" for n in BLEU_WEIGHTS for k in ("p", "r")] + [
    f"{b}_{k}" for b in ("a_bow", "e_bow") for k in ("p", "r")
]


class PaperResponseMetrics:
    """The test routine's scores, context by context (same interface as
    :class:`eval.metrics.ResponseMetrics`).

    BLEU: per context precision = mean over samples, recall = max (one reference). Bag of words:
    samples without any word vector are left out of that context's mean and max; a context
    whose reference or all of whose samples have none is left out of the bag-of-words averages
    (the script cannot score it) and counted in ``bow_unscored``.
    """

    def __init__(self, scorer: PaperBowScorer):
        self.scorer = scorer
        self.contexts = 0
        self.bow_contexts = 0
        self.bow_unscored = 0
        self._sums: dict[str, float] = {}
        self._inter: dict[int, Counter] = {n: Counter() for n in DISTINCT_ORDERS}

    def add(self, samples: Sequence[Tokens], reference: Tokens) -> dict[str, float]:
        if len(samples) == 0:
            raise ValueError("a context needs at least one sample")
        scores: dict[str, float] = {}
        for n in BLEU_WEIGHTS:
            per_sample = [paper_bleu(reference, s, n) for s in samples]
            scores[f"bleu{n}_p"], scores[f"bleu{n}_r"] = float(np.mean(per_sample)), max(per_sample)
        ref = self.scorer.vectors(reference)
        sample_vectors = [v for v in map(self.scorer.vectors, samples) if v is not None]
        if ref is not None and sample_vectors:
            bow = np.array([self.scorer.compare(ref, v) for v in sample_vectors]) * 100.0
            for j, name in enumerate(("a_bow", "e_bow")):
                scores[f"{name}_p"], scores[f"{name}_r"] = (
                    float(bow[:, j].mean()),
                    float(bow[:, j].max()),
                )
            self.bow_contexts += 1
        else:
            self.bow_unscored += 1
        scores["degenerate_rate"] = float(np.mean([is_degenerate(s) for s in samples]))
        for n in DISTINCT_ORDERS:
            pooled = Counter(g for s in samples for g in ngrams(s, n))
            total = sum(pooled.values())
            scores[f"intra_distinct{n}"] = len(pooled) / total if total else 0.0
            self._inter[n].update(pooled)
        for k, v in scores.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self.contexts += 1
        return scores

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        names = PAPER_METRICS + [f"intra_distinct{n}" for n in DISTINCT_ORDERS]
        for name in [*names, "degenerate_rate"]:
            count = self.bow_contexts if "bow" in name else self.contexts
            out[name] = self._sums[name] / count if count and name in self._sums else None
        for n in DISTINCT_ORDERS:
            total = sum(self._inter[n].values())
            out[f"inter_distinct{n}"] = len(self._inter[n]) / total if total else 0.0
        return out
