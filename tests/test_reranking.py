"""model/reranking.py: distinct responses within a draw budget, fits, maximal marginal relevance."""

from __future__ import annotations

import pytest
import torch

from model.batch import context_batch, dialog_batch
from model.config import ModelConfig
from model.cvae import DialogCVAE, gaussian_kl
from model.reranking import (
    Candidate,
    RerankOptions,
    choose,
    distinct_responses,
    fit,
    jaccard,
    score,
)
from model.vocab import Vocabulary

WORDS = "do you have any pets yes we a dog cat i like dogs".split()
VOCAB = Vocabulary.build([WORDS])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DialogCVAE(ModelConfig.preset("tiny", variant="bn-cvae", vocab_size=len(VOCAB))).eval()


def cand(ids, fit_value, draw=0) -> Candidate:
    return Candidate(
        ids=ids, length=len(ids), log_prob=-1.0, finished=True, draw=draw, fit=fit_value
    )


def test_options_budget_and_first_draws():
    assert RerankOptions().first_draws(5) == 5  # none: nothing to choose among
    assert RerankOptions(candidates=40).first_draws(5) == 5
    assert RerankOptions("mmi").first_draws(5) == 10  # 2N by default
    assert RerankOptions("mmi", candidates=3).first_draws(5) == 5
    assert RerankOptions("mmi").budget(5) == 20  # 4N
    assert RerankOptions("mmi", candidates=30).budget(5) == 30
    assert RerankOptions(max_draws=7).budget(5) == 7
    for bad in ({"method": "best"}, {"candidates": -1}, {"diversity": 1.5}, {"mmi_weight": -1}):
        with pytest.raises(ValueError):
            RerankOptions(**bad)


def test_jaccard():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0 and jaccard({1}, set()) == 0.0


def test_choose_by_fit_then_by_maximal_marginal_relevance():
    pool = [cand([1, 2, 3], 1.0), cand([1, 2, 3, 4], 0.9), cand([7], 0.5), cand([8, 9], 0.0)]
    by_fit = choose(pool, 3, RerankOptions("mmi", diversity=0.0))
    assert [c.ids for c in by_fit] == [[1, 2, 3], [1, 2, 3, 4], [7]]
    # scaled fits 1, 0.9, 0.5, 0; at d = 0.5 the near copy (overlap 3/4) scores 0.45 - 0.375
    # = 0.075 < [7]'s 0.25, then > [8, 9]'s 0
    mmr = choose(pool, 3, RerankOptions("mmi", diversity=0.5))
    assert [c.ids for c in mmr] == [[1, 2, 3], [7], [1, 2, 3, 4]]
    # at d = 0.8 it scores 0.18 - 0.6 < 0: [8, 9] comes first
    mmr = choose(pool, 3, RerankOptions("mmi", diversity=0.8))
    assert [c.ids for c in mmr] == [[1, 2, 3], [7], [8, 9]]
    assert [c.ids for c in choose(pool, 2, RerankOptions())] == [[1, 2, 3], [1, 2, 3, 4]]


def test_short_replies_count_as_alike():
    # scaled fits 1, 0.8, 0.6, 0: "yeah" [5], "oh" [6], "uh - huh" [7, 8, 9], a longer reply
    pool = [cand([5], 1.0), cand([6], 0.8), cand([7, 8, 9], 0.6), cand([1, 2, 3, 4], 0.0)]
    # by word overlap alone the three short replies share no word and come first
    plain = choose(pool, 3, RerankOptions("mmi", diversity=0.5))
    assert [c.ids for c in plain] == [[5], [6], [7, 8, 9]]
    # one token alike: [6] scores 0.4 - 0.5 < 0, [1, 2, 3, 4] scores 0 and [7, 8, 9] (3
    # tokens: not short) 0.3
    one = choose(pool, 3, RerankOptions("mmi", diversity=0.5, short_reply_tokens=1))
    assert [c.ids for c in one] == [[5], [7, 8, 9], [1, 2, 3, 4]]
    # up to 3 alike: [6] scores -0.1 and [7, 8, 9] 0.3 - 0.5, below the longer reply's 0
    # (4 tokens: not short, no word shared with [5]); then [6] before [7, 8, 9]
    three = choose(pool, 3, RerankOptions("mmi", diversity=0.5, short_reply_tokens=3))
    assert [c.ids for c in three] == [[5], [1, 2, 3, 4], [6]]
    with pytest.raises(ValueError):
        RerankOptions(short_reply_tokens=-1)


def test_fits():
    c = Candidate(ids=[1, 2, 3], length=3, log_prob=-2.0, finished=True, draw=0)
    c.elbo, c.kl, c.elbo_empty = -10.0, 4.0, -12.0
    assert fit(c, RerankOptions("likelihood")) == -0.5  # per token, </s> included
    assert fit(c, RerankOptions("posterior")) == -4.0
    assert fit(c, RerankOptions("mmi", mmi_weight=0.75)) == -10.0 + 0.75 * 12.0


def test_distinct_responses_are_distinct_within_budget_and_batched(model):
    batch = context_batch([[("A", ["do", "you", "have", "any", "pets"])], []], VOCAB)
    g = torch.Generator().manual_seed(0)
    for options in (RerankOptions(), RerankOptions("mmi", diversity=0.3)):
        out = distinct_responses(
            model, batch, 4, key=tuple, rerank=options, max_length=3, decoding="sample",
            generator=g,
        )  # fmt: skip
        for r in out:
            keys = [tuple(c.ids) for c in r.responses]
            assert len(set(keys)) == len(keys) == min(4, r.distinct)
            assert r.drawn <= options.budget(4) and r.distinct == len(r.pool)
            assert (len(keys) < 4) == (r.drawn == options.budget(4) and r.distinct < 4)
            if options.method == "mmi":
                assert all(c.fit is not None for c in r.pool)
                assert r.responses[0].fit == max(c.fit for c in r.pool)


def test_a_context_that_repeats_itself_gets_redraws_until_the_budget(model):
    batch = context_batch([[("A", ["yes"])]], VOCAB)
    out = distinct_responses(
        model, batch, 3, key=lambda ids: "same", rerank=RerankOptions(max_draws=9), max_length=2
    )
    assert out[0].drawn == 9 and out[0].distinct == 1 and len(out[0].responses) == 1


def test_response_elbo_is_the_training_objective_at_the_posterior_mean(model):
    dialog = [("A", ["do", "you", "have", "any", "pets"]), ("B", ["yes", "a", "dog"])]
    batch = dialog_batch([dialog], VOCAB, spans=[(1, 2)])
    c = model.encode_context(batch)
    words = torch.tensor([VOCAB.encode(["yes", "a", "dog"])])
    nll, kl, tokens = model.response_elbo(c, words, torch.tensor([3]))
    mu_q, logvar_q = model.posterior(batch, c=c)
    mu_p, logvar_p = model.prior_net(c)
    assert kl.item() == pytest.approx(gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).item(), rel=1e-5)
    h0 = model.decoder.initial_state(c, mu_q)
    expected, _, _ = model.decoder.token_nll(
        h0, batch.responses(), batch.utt_lengths[batch.response_index]
    )
    assert nll.item() == pytest.approx(expected.sum().item(), rel=1e-5)
    assert tokens.item() == 4


def test_mmi_scores_each_candidate_under_its_context_and_the_empty_one(model):
    dialogs = [[("A", ["do", "you", "have", "any", "pets"])], [("A", ["i", "like", "dogs"])]]
    c = model.encode_context(context_batch(dialogs, VOCAB))
    replies = [[["yes", "a", "dog"], ["we", "like", "cat"]], [["i", "like", "dogs", "a", "dog"]]]
    pools = [{i: cand(VOCAB.encode(words), None) for i, words in enumerate(row)} for row in replies]
    score(model, c, pools, RerankOptions("mmi", mmi_weight=0.5))
    empty = model.encode_empty_context()
    for context, pool in enumerate(pools):
        for candidate in pool.values():
            words = torch.tensor([candidate.ids])
            length = torch.tensor([candidate.length])
            nll, kl, _ = model.response_elbo(c[context : context + 1], words, length)
            nll_empty, kl_empty, _ = model.response_elbo(empty, words, length)
            assert candidate.elbo == pytest.approx(-(nll + kl).item(), rel=1e-5)
            assert candidate.kl == pytest.approx(kl.item(), rel=1e-5)
            assert candidate.elbo_empty == pytest.approx(-(nll_empty + kl_empty).item(), rel=1e-5)
            assert candidate.fit == pytest.approx(candidate.elbo - 0.5 * candidate.elbo_empty)
    assert len({c.elbo for pool in pools for c in pool.values()}) == 3  # (not all alike)
