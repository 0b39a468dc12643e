"""Every response metric of the evaluation, on small fixed reference/sample sets, against the
reference implementations called here (NLTK with each Zhao BLEU's weights written out, sacrebleu
with the protocol's settings) or computed by hand: A/E/G-bow on the tiny word-vector table
tests/fixtures/tiny_vectors.txt, distinct-n and the degenerate rate from their definitions.

The values go through :class:`eval.metrics.ResponseMetrics`, the accumulator the evaluation
uses, so a change anywhere between a sample and the reported number shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_bleu
from sacrebleu.metrics import BLEU

from eval.embeddings import load_glove
from eval.metrics import (
    ZHAO_BLEU_WEIGHTS,
    EmbeddingScorer,
    ResponseMetrics,
    metric_names,
    precision_recall,
)

VECTORS = Path(__file__).parent / "fixtures" / "tiny_vectors.txt"

# (reference, the K = 3 samples of its context); words the table lacks ("huh", "unknownword")
# have no vector; "don't" and "it's" are split for the lookup (do + n't, it + 's).
CONTEXTS = [
    ("i like dogs", ["i love dogs", "you like cats", "yeah"]),
    ("do you like cats", ["i don't like it", "cats cats cats", "you like cats"]),
    ("it's yeah", ["unknownword", "it's it's yeah yeah", ""]),
    ("yeah i do i do i do", ["yeah i do i do i do", "i do i do i do i", "huh"]),
]
# is_degenerate by its definition: a token three times in a row, or a 3-gram three times
DEGENERATE = [[False, False, False], [False, True, False], [False, False, False],
              [False, True, False]]  # fmt: skip
# Zhao et al.'s NLTK BLEU: uniform weights over the n-gram orders, written out here.
ZHAO_WEIGHTS = {"zhao_bleu3": (1 / 3, 1 / 3, 1 / 3), "zhao_bleu4": (1 / 4, 1 / 4, 1 / 4, 1 / 4)}


def split(text: str) -> list[str]:
    return text.split()


@pytest.fixture  # per test: mutmut maps each test to the code it runs (a shared one would not)
def scored():
    scorer = EmbeddingScorer(load_glove(VECTORS))
    metrics = ResponseMetrics(scorer)
    per_context = [
        metrics.add([split(s) for s in samples], split(ref)) for ref, samples in CONTEXTS
    ]
    return per_context, metrics.result()


def mean_max(values: list[float]) -> tuple[float, float]:
    return sum(values) / len(values), max(values)


def check(per_context, result, name: str, per_sample, tol: float = 1e-9) -> None:
    """``name``_p/_r of every context and of the corpus: mean/max over the samples of
    ``per_sample(sample, reference)``, then the mean over contexts (to ``tol``)."""
    ps, rs = [], []
    for (ref, samples), scores in zip(CONTEXTS, per_context, strict=True):
        p, r = mean_max([per_sample(split(s), split(ref)) for s in samples])
        assert scores[f"{name}_p"] == pytest.approx(p, abs=tol), (name, ref)
        assert scores[f"{name}_r"] == pytest.approx(r, abs=tol), (name, ref)
        ps.append(p)
        rs.append(r)
    assert result[f"{name}_p"] == pytest.approx(sum(ps) / len(ps), abs=tol)
    assert result[f"{name}_r"] == pytest.approx(sum(rs) / len(rs), abs=tol)


# --------------------------------------------------------------------------------------- BLEU
@pytest.mark.parametrize("name", ["zhao_bleu3", "zhao_bleu4"])
def test_zhao_bleu_is_nltk_with_the_weights_of_its_order(scored, name):
    def nltk(hyp, ref):
        try:
            score = nltk_bleu([ref], hyp, ZHAO_WEIGHTS[name],
                              smoothing_function=SmoothingFunction().method7)  # fmt: skip
        except (ZeroDivisionError, ValueError, KeyError):  # Zhao's evaluation counts these as 0
            return 0.0
        return 100 * score

    check(*scored, name, nltk)
    assert ZHAO_BLEU_WEIGHTS[name] == pytest.approx(ZHAO_WEIGHTS[name], abs=1e-15)


def test_zhao_bleu3_and_bleu4_differ_where_4_grams_are_missing(scored):
    per_context, _ = scored
    # "you like cats" against "do you like cats": every 1..3-gram matches, no 4-gram exists
    sample = 2
    ref, samples = CONTEXTS[1]
    assert samples[sample] == "you like cats"
    three = nltk_bleu([split(ref)], split(samples[sample]), ZHAO_WEIGHTS["zhao_bleu3"],
                      smoothing_function=SmoothingFunction().method7)  # fmt: skip
    assert per_context[1]["zhao_bleu3_r"] == pytest.approx(100 * three, abs=1e-9)
    assert per_context[1]["zhao_bleu3_r"] != pytest.approx(per_context[1]["zhao_bleu4_r"], abs=1)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_bleu_n_is_sacrebleu_with_the_protocol_settings(scored, order):
    metric = BLEU(max_ngram_order=order, tokenize="none", smooth_method="exp",
                  effective_order=True)  # fmt: skip

    def sacre(hyp, ref):
        return metric.sentence_score(" ".join(hyp), [" ".join(ref)]).score

    check(*scored, f"bleu{order}", sacre)


def test_bleu_values_pinned_by_hand():
    """Two samples whose sacrebleu scores are simple closed forms."""
    m = ResponseMetrics()
    s = m.add([split("i like dogs"), split("i like")], split("i like dogs"))
    assert s["bleu1_r"] == pytest.approx(100.0)
    # "i like": precisions 1 (unigrams, bigrams), brevity penalty exp(1 - 3/2)
    assert s["bleu2_p"] == pytest.approx((100 + 100 * math.exp(1 - 3 / 2)) / 2)


# ------------------------------------------------------------------------- embedding metrics
TABLE = {
    line.split()[0]: [float(v) for v in line.split()[1:]]
    for line in VECTORS.read_text().splitlines()
}
PIECES = {"don't": ["do", "n't"], "it's": ["it", "'s"]}  # the lookup's split of the OOV words


def vectors(tokens: list[str]) -> list[list[float]]:
    out = []
    for t in tokens:
        for piece in PIECES.get(t, [t]):
            if piece in TABLE:
                out.append(TABLE[piece])
    return out


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def average(vs):
    return [sum(v[d] for v in vs) / len(vs) for d in range(3)]


def extrema(vs):
    out = []
    for d in range(3):
        hi, lo = max(v[d] for v in vs), min(v[d] for v in vs)
        out.append(hi if hi >= abs(lo) else lo)  # the larger magnitude; a tie: the positive
    return out


def greedy(hv, rv):
    one = sum(max(cos(h, r) for r in rv) for h in hv) / len(hv)
    other = sum(max(cos(h, r) for h in hv) for r in rv) / len(rv)
    return (one + other) / 2


def by_hand(kind):
    def score(hyp, ref):
        hv, rv = vectors(hyp), vectors(ref)
        if not hv or not rv:  # a sentence without any vector scores 0
            return 0.0
        if kind == "a_bow":
            return 100 * cos(average(hv), average(rv))
        if kind == "e_bow":
            return 100 * cos(extrema(hv), extrema(rv))
        return 100 * greedy(hv, rv)

    return score


@pytest.mark.parametrize("kind", ["a_bow", "e_bow", "g_bow"])
def test_bow_metrics_by_hand_on_the_tiny_table(scored, kind):
    # (the table is read as float32, as the real vectors are: 1e-5 on a 0..100 scale)
    check(*scored, kind, by_hand(kind), tol=1e-5)


def test_bow_values_pinned():
    """Cases whose value is known without a computation."""
    m = ResponseMetrics(EmbeddingScorer(load_glove(VECTORS)))
    s = m.add([split("i"), split("like"), split("unknownword")], split("i"))
    # cos(i, i) = 1; cos(i, like) = 0; no vector: 0
    assert (s["a_bow_p"], s["a_bow_r"]) == pytest.approx((100 / 3, 100.0))
    assert (s["g_bow_p"], s["e_bow_r"]) == pytest.approx((100 / 3, 100.0))
    # "cats" = (0, -.6, .8) against "dogs" = (0, 0, 1): cosine 0.8
    s = m.add([split("cats")], split("dogs"))
    assert (s["a_bow_r"], s["e_bow_r"], s["g_bow_r"]) == pytest.approx((80.0, 80.0, 80.0))


# -------------------------------------------------------------------------------- diversity
def distinct(sentences: list[list[str]], n: int) -> float:
    grams = [tuple(s[i : i + n]) for s in sentences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@pytest.mark.parametrize("n", [1, 2])
def test_distinct_n_within_and_across_contexts(scored, n):
    per_context, result = scored
    intra = []
    for (_, samples), scores in zip(CONTEXTS, per_context, strict=True):
        value = distinct([split(s) for s in samples], n)
        assert scores[f"intra_distinct{n}"] == pytest.approx(value, abs=1e-12)
        intra.append(value)
    assert result[f"intra_distinct{n}"] == pytest.approx(sum(intra) / len(intra), abs=1e-12)
    pooled = [split(s) for _, samples in CONTEXTS for s in samples]
    assert result[f"inter_distinct{n}"] == pytest.approx(distinct(pooled, n), abs=1e-12)


def test_distinct_values_pinned():
    m = ResponseMetrics()
    s = m.add([split("a b a b"), split("a c")], split("x"))
    # unigrams a b a b a c: 3 distinct of 6; bigrams ab ba ab ac: 3 of 4
    assert (s["intra_distinct1"], s["intra_distinct2"]) == (0.5, 0.75)
    m.add([split("d")], split("x"))
    r = m.result()
    # pooled unigrams a b a b a c d: 4 of 7; bigrams the same 3 of 4
    assert (r["inter_distinct1"], r["inter_distinct2"]) == (4 / 7, 0.75)
    assert (r["intra_distinct1"], r["intra_distinct2"]) == ((0.5 + 1.0) / 2, (0.75 + 0.0) / 2)


def test_degenerate_rate(scored):
    per_context, result = scored
    rates = [sum(d) / len(d) for d in DEGENERATE]
    assert [s["degenerate_rate"] for s in per_context] == pytest.approx(rates, abs=1e-12)
    assert result["degenerate_rate"] == pytest.approx(sum(rates) / len(rates), abs=1e-12)


@pytest.mark.parametrize(
    "text, looping",
    [
        ("a a a", True),  # a run of three
        ("a a b a", False),  # two in a row, three in all: not a run
        ("a b c a b c a b c", True),  # a 3-gram three times
        ("a b c a b c", False),  # twice
        ("a b c d a b c x a b c", True),  # three times, not adjacent
        ("a b a b a b", False),  # "a b a" and "b a b" twice each
        ("a b a b a b a", True),  # "a b a" three times, overlapping
        ("a b", False),
        ("", False),
    ],
)
def test_degenerate_at_its_thresholds(text, looping):
    m = ResponseMetrics()
    assert m.add([split(text)], split("x"))["degenerate_rate"] == float(looping)


def test_metric_names_and_the_keys_of_a_contexts_scores():
    names = metric_names()
    assert names[:8] == ["bleu1_p", "bleu1_r", "bleu2_p", "bleu2_r", "bleu3_p", "bleu3_r",
                         "bleu4_p", "bleu4_r"]  # fmt: skip
    assert names[8:] == ["zhao_bleu3_p", "zhao_bleu3_r", "zhao_bleu4_p", "zhao_bleu4_r",
                         "a_bow_p", "a_bow_r", "e_bow_p", "e_bow_r", "g_bow_p", "g_bow_r",
                         "intra_distinct1", "intra_distinct2", "inter_distinct1",
                         "inter_distinct2", "degenerate_rate", "one_token_rate"]  # fmt: skip
    scores = ResponseMetrics(EmbeddingScorer(load_glove(VECTORS))).add([split("i")], split("i"))
    assert set(scores) == {n for n in names if not n.startswith("inter_")}


def test_a_context_without_samples_is_refused_and_no_tokens_are_all_covered():
    with pytest.raises(ValueError, match="^a context needs at least one sample$"):
        ResponseMetrics().add([], split("i"))
    with pytest.raises(ValueError, match="^a context needs at least one sample$"):
        precision_recall([])
    scorer = EmbeddingScorer(load_glove(VECTORS))
    assert scorer.coverage([]) == 1.0
    assert scorer.coverage([split("i huh")]) == 0.5
