"""DecodingOptions in DialogCVAE.sample_responses: blocking, penalty, top-k/top-p, <unk>."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from eval.metrics import is_degenerate
from model.batch import context_batch
from model.config import ModelConfig
from model.cvae import DialogCVAE, looping_tokens
from model.decoding import (
    READABLE,
    DecodingOptions,
    block_repeated_ngrams,
    keep_top_k,
    keep_top_p,
    penalize_repetitions,
    repeated_ngram_mask,
    run_mask,
)
from model.vocab import Vocabulary

WORDS = [f"w{i}" for i in range(60)]
VOCAB = Vocabulary.build([WORDS])


def make_model(seed: int = 0) -> DialogCVAE:
    torch.manual_seed(seed)
    model = DialogCVAE(ModelConfig.preset("tiny", vocab_size=len(VOCAB))).eval()
    with torch.no_grad():  # a wide prior: different z give different words
        model.prior_net.mlp[-1].bias[model.config.latent_dim :] = 3.0
    return model


def looping_model() -> DialogCVAE:
    """A model that prefers a few words and almost never ends: greedy decoding loops."""
    model = make_model()
    with torch.no_grad():
        bias = model.decoder.out.bias
        bias[VOCAB.index["w1"]] += 8.0
        bias[VOCAB.index["w2"]] += 7.0
        bias[VOCAB.eos_id] -= 20.0
    return model


def contexts(n: int = 3, seed: int = 0):
    rng = random.Random(seed)
    dialogs = [
        [(rng.choice("AB"), rng.sample(WORDS, rng.randint(1, 8))) for _ in range(rng.randint(0, 6))]
        for _ in range(n)
    ]
    return context_batch(dialogs, VOCAB)


def sample(model, options=None, decoding="greedy", seed=0, n=4, max_length=20, **kw):
    kwargs = {} if options is None else {"options": options}
    return model.sample_responses(
        contexts(),
        n,
        max_length=max_length,
        decoding=decoding,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
        **kw,
    )


def responses(out) -> list[list[int]]:
    return [
        out.token_ids[e, i, : out.lengths[e, i]].tolist()
        for e in range(out.token_ids.shape[0])
        for i in range(out.token_ids.shape[1])
    ]


@torch.inference_mode()
def previous_sample_responses(model, batch, num_samples, max_length, decoding, temperature, gen):
    """sample_responses as it was before DecodingOptions (commit 6d89828), for comparison."""
    c = model.encode_context(batch)
    e, n = c.shape[0], num_samples
    c = c.repeat_interleave(n, dim=0)
    mu, logvar = model.prior_net(c)
    noise = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
    z = mu + noise.reshape(mu.shape).to(mu) * torch.exp(0.5 * logvar)
    h = model.decoder.initial_state(c, z).squeeze(0)
    b = e * n
    bos, eos = Vocabulary.bos_id, Vocabulary.eos_id
    out = torch.zeros((b, max_length), dtype=torch.long)
    log_probs = torch.zeros(b)
    lengths = torch.full((b,), max_length, dtype=torch.long)
    rows = torch.arange(b)
    token = torch.full((b,), bos, dtype=torch.long)
    banned = torch.tensor([Vocabulary.pad_id, bos, Vocabulary.bod_id])
    for t in range(max_length):
        h = model.decoder.step(token, h)
        logits = model.decoder.logits(h)
        logits[:, banned] = float("-inf")
        logp = F.log_softmax(logits, dim=-1)
        if decoding == "greedy":
            token = logp.argmax(dim=-1)
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        log_probs[rows] += logp.gather(1, token.unsqueeze(1)).squeeze(1)
        out[rows, t] = token
        ended = token == eos
        lengths[rows[ended]] = t
        if ended.all():
            break
        keep = ~ended
        rows, token, h = rows[keep], token[keep], h[keep]
    width = int(out.ne(0).sum(1).max().item())
    return out[:, : max(width, 1)].reshape(e, n, -1), lengths.reshape(e, n), log_probs.reshape(e, n)


# --- the defaults are the plain decoding ------------------------------------------------------


@pytest.mark.parametrize(
    "decoding, temperature", [("greedy", 1.0), ("sample", 1.0), ("sample", 0.7)]
)
@pytest.mark.parametrize("options", [None, DecodingOptions()])
def test_defaults_reproduce_the_previous_decoder_token_for_token(decoding, temperature, options):
    for model in (make_model(), looping_model()):
        for seed in range(3):
            new = sample(
                model, options, decoding, seed, n=5, max_length=25, temperature=temperature
            )
            old = previous_sample_responses(
                model, contexts(), 5, 25, decoding, temperature, torch.Generator().manual_seed(seed)
            )
            assert torch.equal(new.token_ids, old[0])
            assert torch.equal(new.lengths, old[1])
            assert torch.equal(new.log_probs, old[2])


# --- n-gram blocking and the repetition penalty -----------------------------------------------


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_the_looping_model_repeats_itself_without_options():
    for r in responses(sample(looping_model(), max_length=12)):
        assert len(set(ngrams(r, 3))) < len(ngrams(r, 3)), r


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("decoding", ["greedy", "sample"])
def test_no_repeat_ngram_size_prevents_every_repeated_ngram(n, decoding):
    options = DecodingOptions(no_repeat_ngram_size=n)
    for seed in range(3):
        out = sample(looping_model(), options, decoding, seed, max_length=30)
        for r in responses(out):
            assert len(r) == 30  # the looping model does not stop: long responses
            assert len(set(ngrams(r, n))) == len(ngrams(r, n)), (n, r)


def test_block_repeated_ngrams_bans_exactly_the_completing_tokens():
    history = torch.tensor([[1, 2, 3, 1, 2], [4, 4, 4, 5, 6]])
    logits = torch.zeros(2, 8)
    block_repeated_ngrams(logits, history, 3)
    # row 0: "1 2" was followed by 3 -> 3 is banned; row 1: "5 6" never seen before
    assert torch.isinf(logits[0]).nonzero().flatten().tolist() == [3]
    assert not torch.isinf(logits[1]).any()
    logits = torch.zeros(2, 8)
    block_repeated_ngrams(logits, history, 2)  # row 0: "2" -> 3; row 1: "6" -> nothing
    assert torch.isinf(logits).nonzero().tolist() == [[0, 3]]
    logits = torch.zeros(2, 8)
    block_repeated_ngrams(logits, history, 1)  # every word once
    assert torch.isinf(logits[1]).nonzero().flatten().tolist() == [4, 5, 6]


def welleck_ngram_repeat_mask(tokens: list[int], n: int, occurrence: int = 2) -> list[bool]:
    """Welleck et al. (2020)'s candidates, as their reference code finds them: the tokens of
    every n-gram seen before in the sequence (``occurrence`` 2; 3: seen twice before)."""
    mask, seen = [False] * len(tokens), Counter()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        seen[gram] += 1
        if seen[gram] >= occurrence:
            mask[i : i + n] = [True] * n
    return mask


def plain_looping_tokens(tokens: list[int]) -> list[bool]:
    """model.cvae.looping_tokens, one token at a time: a 3-gram's third occurrence on, or the
    third token of a run on."""
    runs = [i >= 2 and tokens[i] == tokens[i - 1] == tokens[i - 2] for i in range(len(tokens))]
    grams = welleck_ngram_repeat_mask(tokens, 3, occurrence=3)
    return [a or b for a, b in zip(runs, grams, strict=True)]


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return tokens, torch.tensor([len(r) for r in rows])


def random_rows(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    rows = [[rng.randint(1, 4) for _ in range(rng.randint(0, 14))] for _ in range(60)]
    return rows + [[1, 2, 3, 1, 2, 3, 1], [5, 5, 5, 5]]


@pytest.mark.parametrize("occurrence", [2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_repeated_ngram_mask_matches_welleck_et_al(n, occurrence):
    rows = random_rows(n)
    tokens, lengths = padded(rows)
    mask = repeated_ngram_mask(tokens, lengths, n, occurrence)
    for row, m in zip(rows, mask.tolist(), strict=True):
        expected = welleck_ngram_repeat_mask(row, n, occurrence)
        assert m == expected + [False] * (tokens.shape[1] - len(row)), row
    if (n, occurrence) == (3, 2):  # by hand: "1 2 3", "2 3 1" come back; "5 5 5" twice
        assert mask[-2, :7].tolist() == [False] * 3 + [True] * 4
        assert mask[-1, :4].tolist() == [False, True, True, True]


def test_run_mask_and_looping_tokens_find_what_the_evaluation_calls_degenerate():
    """looping_tokens (what the sequence-level unlikelihood penalises) marks a response iff
    eval.metrics.is_degenerate calls it degenerate, and exactly the tokens of the plain loop."""
    assert run_mask(*padded([[5, 5, 5, 5, 1, 1, 2]]), 3).tolist() == [[0, 0, 1, 1, 0, 0, 0]]
    assert run_mask(*padded([[5, 5, 5, 5, 1, 1, 2]]), 2).tolist() == [[0, 1, 1, 1, 0, 1, 0]]
    rows = random_rows(0) + random_rows(1) + [[7, 7, 7], [1, 2, 3, 1, 2, 3, 1, 2, 3], [7, 7]]
    tokens, lengths = padded(rows)
    mask = looping_tokens(tokens, lengths)
    for row, m in zip(rows, mask.tolist(), strict=True):
        assert m[: len(row)] == plain_looping_tokens(row) and not any(m[len(row) :])
        assert any(m) == is_degenerate([str(x) for x in row]), row
    assert 0 < sum(map(any, mask.tolist())) < len(rows)


# eos bias 1.5: responses that loop to max_length and empty ones; 1.7: short ones that repeat
@pytest.mark.parametrize("eos_bias", [1.5, 1.7])
def test_sequence_unlikelihood_matches_a_plain_loop_over_the_greedy_responses(eos_bias):
    """Welleck et al. (2020), sequence-level: the model's greedy responses (z ~ p(z|c), as the
    evaluation decodes), and -sum log(1 - p(x_t | x_<t)) over the tokens of their repeated
    3-grams (from a 3-gram's third occurrence on) and runs (from a run's third token on),
    recomputed here one step at a time."""
    model = make_model()
    with torch.no_grad():
        model.decoder.out.bias[VOCAB.index["w1"]] += 2.0
        model.decoder.out.bias[VOCAB.eos_id] += eos_bias
    batch = contexts(12)
    c = model.encode_context(batch)
    mu_p, logvar_p = model.prior_net(c)
    torch.manual_seed(1)
    loss, repeating = model.sequence_unlikelihood(c, mu_p, logvar_p)
    torch.manual_seed(1)
    noise = torch.randn_like(mu_p)
    max_length = model.config.max_utt_len
    out = model.sample_responses(batch, 1, max_length=max_length, noise=noise.unsqueeze(1))
    rows = responses(out)

    z = mu_p + noise * torch.exp(0.5 * logvar_p)
    expected = []
    with torch.no_grad():
        for e, words in enumerate(rows):
            said = words + ([VOCAB.eos_id] if len(words) < max_length else [])
            h = model.decoder.initial_state(c[e : e + 1], z[e : e + 1]).squeeze(0)
            token, total = torch.tensor([VOCAB.bos_id]), 0.0
            for x, repeated in zip(said, plain_looping_tokens(said), strict=True):
                h = model.decoder.step(token, h)
                p = torch.softmax(model.decoder.logits(h), dim=-1)[0, x]
                total -= torch.log(1 - p).item() if repeated else 0.0
                token = torch.tensor([x])
            expected.append(total)
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert repeating.tolist() == [any(plain_looping_tokens(r)) for r in rows]
    assert repeating.any() and (loss > 0).any()


def test_a_step_on_the_sequence_unlikelihood_lowers_the_repeated_tokens_probabilities():
    """Its gradient reaches the decoder, the prior and the context encoder, and a step along
    it (small enough that the greedy responses stay the same) makes the looping model's
    repeated tokens less likely."""
    model = looping_model()
    batch = contexts(4)

    def greedy() -> list[list[int]]:
        gen = torch.Generator().manual_seed(0)
        return responses(model.sample_responses(batch, 2, max_length=40, generator=gen))

    before = greedy()
    c = model.encode_context(batch)
    mu_p, logvar_p = model.prior_net(c)
    torch.manual_seed(0)
    loss, _ = model.sequence_unlikelihood(c, mu_p, logvar_p)
    loss.sum().backward()
    for module in (model.decoder, model.prior_net, model.ctx_encoder, model.utt_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in model.recognition.parameters())
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-4 * p.grad
    c = model.encode_context(batch)
    mu_p, logvar_p = model.prior_net(c)
    torch.manual_seed(0)
    after, _ = model.sequence_unlikelihood(c, mu_p, logvar_p)
    assert greedy() == before
    assert after.sum() < loss.sum()


def test_repetition_penalty_scales_the_logits_of_seen_tokens_once():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalize_repetitions(logits, torch.tensor([[0, 1, 0]]), 2.0)
    assert logits.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_repetition_penalty_discourages_repeats():
    model = make_model()
    with torch.no_grad():  # two favourite words, within a factor 2 of each other
        model.decoder.out.bias[VOCAB.index["w1"]] += 4.0
        model.decoder.out.bias[VOCAB.index["w2"]] += 3.0
        model.decoder.out.bias[VOCAB.eos_id] -= 20.0

    def second_word_repeats_first(options):
        rs = [r for s in range(3) for r in responses(sample(model, options, seed=s))]
        return sum(r[0] == r[1] for r in rs) / len(rs)

    assert second_word_repeats_first(None) > 0.5  # "w1 w1 w1 ..."
    # Once said, w1's logit is halved and w2 comes first.
    assert second_word_repeats_first(DecodingOptions(repetition_penalty=2.0)) < 0.1


# --- top-k and top-p ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(top_k=1),
        DecodingOptions(top_p=1e-6),
        READABLE,
        DecodingOptions(top_k=1, anti_lm_weight=0.5),
    ],
)
def test_sampling_from_one_candidate_equals_greedy(options):
    if options is READABLE:
        options = replace(READABLE, top_k=1)
    for model in (make_model(), looping_model()):
        for seed in range(3):
            greedy = sample(model, options, "greedy", seed, n=5)
            sampled = sample(model, options, "sample", seed, n=5, temperature=1.5)
            assert torch.equal(sampled.token_ids, greedy.token_ids)
            assert torch.equal(sampled.log_probs, greedy.log_probs)


def test_keep_top_k_and_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = {}
    for name, apply, arg in [
        ("k1", keep_top_k, 1),
        ("k3", keep_top_k, 3),
        ("k9", keep_top_k, 9),
        ("p0.4", keep_top_p, 0.4),
        ("p0.6", keep_top_p, 0.6),
        ("p0.9", keep_top_p, 0.9),
        ("p1", keep_top_p, 1.0),
    ]:
        logits = probs.log()[:, [2, 0, 3, 1]]  # shuffled: the order is found, not assumed
        apply(logits, arg)
        kept[name] = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert kept == {
        "k1": [1],
        "k3": [0, 1, 3],
        "k9": [0, 1, 2, 3],
        "p0.4": [1],
        "p0.6": [1, 3],
        "p0.9": [0, 1, 3],
        "p1": [0, 1, 2, 3],
    }


def test_top_k_sampling_draws_only_from_the_k_best():
    model = make_model()
    batch = contexts()
    for seed in range(3):
        out = model.sample_responses(
            batch, 4, 1, "sample", 2.0, torch.Generator().manual_seed(seed), None,
            DecodingOptions(top_k=3),
        )  # fmt: skip
        # the first token's 3 best candidates, recomputed for the same z
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            c = model.encode_context(batch).repeat_interleave(4, dim=0)
            mu, logvar = model.prior_net(c)
            z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
            h = model.decoder.step(
                torch.full((c.shape[0],), VOCAB.bos_id), model.decoder.initial_state(c, z)[0]
            )
            logits = model.decoder.logits(h)
        logits[:, [VOCAB.pad_id, VOCAB.bos_id, VOCAB.bod_id]] = float("-inf")
        best = logits.topk(3, dim=1).indices
        first = out.token_ids.reshape(-1, out.token_ids.shape[-1])[:, 0]
        assert (best == first.unsqueeze(1)).any(dim=1).all()


# --- <unk> ---------------------------------------------------------------------------------------


def unk_loving_model() -> DialogCVAE:
    model = make_model()
    with torch.no_grad():
        model.decoder.out.bias[VOCAB.unk_id] += 30.0
    return model


@pytest.mark.parametrize("decoding", ["greedy", "sample"])
def test_unk_is_never_generated_when_not_allowed(decoding):
    model = unk_loving_model()
    plain = torch.cat([sample(model, None, decoding, s).token_ids.flatten() for s in range(3)])
    assert (plain == VOCAB.unk_id).sum() > 10  # the model wants <unk> ...
    for options in (DecodingOptions(allow_unk=False), READABLE):
        for seed in range(3):
            out = sample(model, options, decoding, seed)
            assert not (out.token_ids == VOCAB.unk_id).any()  # ... and never gets it
            assert torch.isfinite(out.log_probs).all()


# --- the options themselves ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"repetition_penalty": 0.5}, "repetition_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"anti_lm_weight": -0.1}, "anti_lm_weight"),
        ({"anti_lm_weight": 1.5}, "anti_lm_weight"),
        ({"anti_lm_weight": float("nan")}, "anti_lm_weight"),
    ],
)
def test_invalid_options_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DecodingOptions(**fields)


def test_the_readable_preset_changes_decoding_and_the_default_does_not():
    assert DecodingOptions().is_plain and not READABLE.is_plain
    assert READABLE.no_repeat_ngram_size > 0 and not READABLE.allow_unk


def test_top_p_below_float32_keeps_the_most_likely_token():
    from model.decoding import keep_top_p

    logits = torch.tensor([[1.0, 3.0, 2.0]])
    keep_top_p(logits, 5e-324)  # found by the API fuzzer: a NaN softmax before the fix
    assert torch.isfinite(logits).tolist() == [[False, True, False]]


# --- MMI-antiLM -----------------------------------------------------------------------------


@torch.inference_mode()
def anti_lm_greedy(model, batch, num_samples, max_length, weight, gen):
    """Greedy MMI-antiLM decoding written out one row at a time: at each step the token with
    the largest log p(y|c,z) - weight * log p(y|empty,z), both decoders fed the same tokens."""
    c = model.encode_context(batch).repeat_interleave(num_samples, dim=0)
    mu, logvar = model.prior_net(c)
    z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
    empty = model.encode_empty_context()
    banned = [Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.bod_id]
    rows = []
    for i in range(c.shape[0]):
        h = model.decoder.initial_state(c[i : i + 1], z[i : i + 1]).squeeze(0)
        h_empty = model.decoder.initial_state(empty, z[i : i + 1]).squeeze(0)
        token, words, log_prob = torch.tensor([Vocabulary.bos_id]), [], 0.0
        for _ in range(max_length):
            h, h_empty = model.decoder.step(token, h), model.decoder.step(token, h_empty)
            logp = model.decoder.logits(h)[0]
            generic = model.decoder.logits(h_empty)[0]
            logp[banned] = float("-inf")
            generic[banned] = float("-inf")
            logp, generic = logp.log_softmax(0), generic.log_softmax(0)
            best = max(
                (i for i in range(len(logp)) if i not in banned),
                key=lambda i: (logp[i] - weight * generic[i]).item(),
            )
            log_prob += logp[best].item()
            if best == Vocabulary.eos_id:
                break
            words.append(best)
            token = torch.tensor([best])
        rows.append((words, log_prob))
    return rows


@pytest.mark.parametrize("weight", [0.3, 0.9])
def test_anti_lm_decoding_picks_the_tokens_a_plain_loop_picks(weight):
    model = make_model()
    for seed in range(2):
        out = sample(model, DecodingOptions(anti_lm_weight=weight), "greedy", seed, n=3)
        expected = anti_lm_greedy(
            model, contexts(), 3, 20, weight, torch.Generator().manual_seed(seed)
        )
        assert responses(out) == [words for words, _ in expected]
        assert out.log_probs.flatten().tolist() == pytest.approx(
            [log_prob for _, log_prob in expected], abs=1e-4
        )


def test_anti_lm_changes_the_responses_and_reports_the_models_own_log_probs():
    model = make_model()
    plain = sample(model, seed=1, n=5)
    anti = sample(model, DecodingOptions(anti_lm_weight=0.9), seed=1, n=5)
    assert responses(anti) != responses(plain)
    # The reported log-probability is the model's, not the MMI score: never above 0.
    assert (anti.log_probs <= 0).all()
