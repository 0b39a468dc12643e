"""What /respond answers: readable decoding by default, text for display, what the model read of
the input (unknown words, unreadable text), and conversations of any length."""

from __future__ import annotations

import inspect
import time
import warnings

import pytest
import torch

from model.batch import context_batch
from model.config import ModelConfig
from model.cvae import DialogCVAE, SampledResponses
from model.text import tokenize
from model.vocab import Vocabulary
from service.app import create_app
from service.config import ServiceConfig
from service.conversation import read_conversation, unreadable_pieces
from service.engine import InferenceEngine

with warnings.catch_warnings():  # starlette's note that its TestClient will move to httpx2
    warnings.filterwarnings("ignore", message=".*httpx2", category=UserWarning)
    from fastapi.testclient import TestClient

WORDS = "do you have any pets yes we a dog cat it ' s don t like dogs i".split()
VOCAB = Vocabulary.build([WORDS])
PLAIN = {"no_repeat_ngram_size": 0, "repetition_penalty": 1.0, "top_p": 1.0, "allow_unk": True}


def tiny_model(bias: dict[int, float] | None = None) -> DialogCVAE:
    """A small random model; ``bias`` makes some tokens more (or less) likely."""
    torch.manual_seed(0)
    model = DialogCVAE(ModelConfig.preset("tiny", vocab_size=len(VOCAB))).eval()
    with torch.no_grad():
        for token_id, value in (bias or {}).items():
            model.decoder.out.bias[token_id] += value
    return model


def serve(model: DialogCVAE):
    # float32 logits: in bfloat16 two tokens tie now and then, and top_k=1 keeps both (as HF's
    # top-k does), so that sampling from "the" top token would not always equal greedy.
    config = ServiceConfig(torch_threads=1, decode_dtype="float32")
    engine = InferenceEngine.from_model(model, VOCAB, config)
    client = TestClient(create_app(engine))
    client.__enter__()
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client():
    c = serve(tiny_model())
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def unk_looping_client():
    """A model that says <unk> and never stops: plain greedy decoding loops on <unk>."""
    c = serve(tiny_model({VOCAB.unk_id: 30.0, VOCAB.eos_id: -30.0}))
    yield c
    c.__exit__(None, None, None)


CONVERSATION = [
    {"speaker": "A", "text": "Do you have any pets?"},
    {"speaker": "B", "text": "Yes, we have a dog."},
]


def respond(client, **fields):
    r = client.post("/respond", json={"conversation": CONVERSATION, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def trigrams(words):
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


# --- decoding -----------------------------------------------------------------------------------


def test_by_default_responses_have_no_unk_and_no_repeated_trigram(unk_looping_client):
    plain = respond(unk_looping_client, num_samples=3, max_length=12, seed=0, **PLAIN)
    for r in plain["responses"]:
        assert r["text"].split() == ["<unk>"] * 12  # what the model does by itself
    for decoding in ("greedy", "sample"):
        out = respond(unk_looping_client, num_samples=3, max_length=12, decoding=decoding, seed=0)
        for r in out["responses"]:
            # (words, not tokens: "it ' s" is shown as "it's"; a repeated word trigram would
            # be a repeated token trigram too)
            words = r["text"].split()
            assert r["num_tokens"] == 12 and "<unk>" not in words
            assert len(set(trigrams(words))) == len(trigrams(words)), words


def test_sampling_from_the_top_token_equals_greedy(client):
    for seed in range(3):
        greedy = respond(client, num_samples=4, seed=seed)["responses"]
        top1 = respond(client, num_samples=4, seed=seed, decoding="sample", top_k=1)["responses"]
        assert top1 == greedy


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"no_repeat_ngram_size": 61}, "no_repeat_ngram_size"),
        ({"no_repeat_ngram_size": "3"}, "no_repeat_ngram_size"),
        ({"repetition_penalty": 0.9}, "repetition_penalty"),
        ({"repetition_penalty": "high"}, "repetition_penalty"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"allow_unk": "yes"}, "allow_unk"),
        ({"allow_unk": 1}, "allow_unk"),
        ({"anti_lm_weight": -0.1}, "anti_lm_weight"),
        ({"anti_lm_weight": 1.5}, "anti_lm_weight"),
        ({"anti_lm_weight": "high"}, "anti_lm_weight"),
    ],
)
def test_invalid_decoding_options_get_422_naming_the_field(client, fields, field):
    r = client.post("/respond", json={"conversation": CONVERSATION, **fields})
    assert r.status_code == 422, r.text
    assert any(field in map(str, err["loc"]) for err in r.json()["detail"]), r.text


def test_anti_lm_weight_reaches_the_model_on_both_endpoints(client):
    model = client.app.state.engine.model
    original = model.sample_given_context
    weights: list[float] = []

    def recording(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        weights.append(bound.arguments["options"].anti_lm_weight)
        return original(*args, **kwargs)

    model.sample_given_context = recording
    try:
        plain = respond(client, num_samples=3, seed=1, rerank="none")
        anti = respond(client, num_samples=3, seed=1, rerank="none", anti_lm_weight=0.9)
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": client.app.state.engine.name,
                "messages": [{"role": "user", "content": "do you have any pets"}],
                "n": 2,
                "anti_lm_weight": 0.4,
            },
        )
    finally:
        model.sample_given_context = original
    assert r.status_code == 200, r.text
    assert set(weights) == {0.0, 0.9, 0.4}
    assert [x["text"] for x in anti["responses"]] != [x["text"] for x in plain["responses"]]


# --- readable output ----------------------------------------------------------------------------


def test_responses_are_detokenized_and_carry_log_prob_and_token_count(client):
    engine = client.app.state.engine
    model = engine.model
    ids = [[VOCAB.encode("it ' s a dog".split()) + [VOCAB.eos_id]]]
    original = model.sample_given_context

    def fixed(*args, **kwargs):  # the model "says" wordpunct tokens
        return SampledResponses(torch.tensor(ids), torch.tensor([[5]]), torch.tensor([[-3.5]]))

    model.sample_given_context = fixed
    try:
        out = respond(client, num_samples=1, rerank="none")
    finally:
        model.sample_given_context = original
    assert out["responses"] == [
        {"text": "it's a dog", "log_prob": -3.5, "num_tokens": 5, "fit": None}
    ]
    assert out["sampling"] == {
        "requested": 1,
        "returned": 1,
        "drawn": 1,
        "distinct": 1,
        "rerank": "none",
        "warning": None,
    }


# --- distinct responses, ranked by fit ----------------------------------------------------


def repeating(texts: list[str]):
    """A stand-in for sample_given_context that says ``texts`` in turn, one per draw, and
    records how many draws each call asked for."""
    calls: list[tuple[int, int]] = []
    said = iter(range(10_000))

    def sample(c, num_samples, *args, **kwargs):
        calls.append((c.shape[0], num_samples))
        rows = []
        for _ in range(c.shape[0] * num_samples):
            words = texts[next(said) % len(texts)].split()
            rows.append(VOCAB.encode(words) + [VOCAB.eos_id] + [0] * (4 - len(words)))
        e, n = c.shape[0], num_samples
        ids = torch.tensor(rows).reshape(e, n, -1)
        lengths = (ids != 0).sum(-1) - 1
        return SampledResponses(ids, lengths, torch.full((e, n), -1.0))

    return sample, calls


def test_responses_are_distinct_with_redraws_reported(client):
    model = client.app.state.engine.model
    original = model.sample_given_context
    # 5 asked for: the first 5 draws hold 2 distinct texts; redraws bring the third to fifth
    model.sample_given_context, calls = repeating(
        ["yes", "yes", "a dog", "yes", "a dog", "a cat", "a dog", "dogs", "yes", "i like it"]
    )
    try:
        out = respond(client, num_samples=5, rerank="none")
    finally:
        model.sample_given_context = original
    texts = [r["text"] for r in out["responses"]]
    assert texts == ["yes", "a dog", "a cat", "dogs", "i like it"]
    # 5 drawn, 2 distinct: 3 missing, so 6 more (twice the missing), in one batched call
    assert calls == [(1, 5), (1, 6)]
    assert out["sampling"]["drawn"] == 11 and out["sampling"]["distinct"] == 5
    assert out["sampling"]["warning"] is None


def test_fewer_responses_said_plainly_when_the_draws_run_out(client):
    model = client.app.state.engine.model
    original = model.sample_given_context
    model.sample_given_context, calls = repeating(["yes", "we like dogs"])
    try:
        out = respond(client, num_samples=3, rerank="none", max_draws=7)
    finally:
        model.sample_given_context = original
    assert [r["text"] for r in out["responses"]] == ["yes", "we like dogs"]
    assert calls == [(1, 3), (1, 2), (1, 2)]  # 3, then twice the one missing, up to 7
    s = out["sampling"]
    assert (s["requested"], s["returned"], s["drawn"], s["distinct"]) == (3, 2, 7, 2)
    assert s["warning"].startswith("only 2 distinct responses in 7 latent samples")


@pytest.mark.parametrize("method", ["likelihood", "posterior", "mmi"])
def test_reranked_responses_are_distinct_and_ordered_by_fit(client, method):
    out = respond(
        client, num_samples=4, rerank=method, candidates=12, diversity=0.0, decoding="sample"
    )
    texts = [r["text"] for r in out["responses"]]
    fits = [r["fit"] for r in out["responses"]]
    assert len(set(texts)) == len(texts) == 4
    assert fits == sorted(fits, reverse=True) and all(f is not None for f in fits)
    assert out["sampling"]["drawn"] >= 12 and out["sampling"]["rerank"] == method


def test_openai_choices_are_distinct_and_take_the_rerank_fields(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": client.app.state.engine.name,
            "messages": [{"role": "user", "content": "do you have any pets"}],
            "n": 4,
            "temperature": 1.0,
            "rerank": "mmi",
            "candidates": 8,
            "mmi_weight": 0.5,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) == len(texts) == 4
    assert body["sampling"]["rerank"] == "mmi" and body["sampling"]["drawn"] >= 8


@pytest.mark.parametrize(
    "field", [{"rerank": "best"}, {"candidates": -1}, {"mmi_weight": 1.5}, {"diversity": -0.1}]
)
def test_bad_rerank_fields_are_422(client, field):
    r = client.post("/respond", json={"conversation": CONVERSATION, **field})
    assert r.status_code == 422, r.text


# --- what the model read of the input -------------------------------------------------------


def test_the_response_says_how_much_of_the_input_was_unknown(client):
    known = respond(client, num_samples=1)["input"]
    assert known == {
        "turns": 2,
        "turns_read": 2,
        "tokens": 10,
        "unknown_tokens": 0,
        "unreadable": 0,
        "unknown_rate": 0.0,
        "warning": None,
    }
    some = [{"speaker": "A", "text": "Do you like zyzzyvas? 🙂"}]
    report = respond(client, conversation=some, num_samples=1)["input"]
    assert (report["tokens"], report["unknown_tokens"], report["unreadable"]) == (4, 1, 1)
    assert report["unknown_rate"] == pytest.approx(2 / 5, abs=1e-4)
    assert report["warning"] is None
    for text in ("¿Qué tal? Me llamo Juan", "你好吗", "🐶🐱 !!!", "Zyzzyva quokkas"):
        report = respond(client, conversation=[{"speaker": "A", "text": text}])["input"]
        assert report["unknown_rate"] > 0.5, (text, report)
        assert "most of the input could not be read" in report["warning"], text


def test_unreadable_pieces():
    assert unreadable_pieces("plain english, with punctuation!?") == 0
    assert unreadable_pieces("¿qué tal? café") == 2  # é twice; ¿ is punctuation
    assert unreadable_pieces("你好吗 🙂🙂 ok") == 2
    assert unreadable_pieces("it’s “quoted” — yes") == 0  # typographic punctuation


def test_the_checkpoints_tokenizer_reads_the_input():
    model = tiny_model()
    model.config.tokenizer = "words"  # from before WordPunct, like the first shipped checkpoint
    turns = [("A", "It's a dog")]
    assert read_conversation(turns, None, model, VOCAB).turns == [("A", ["it's", "a", "dog"])]
    model.config.tokenizer = "wordpunct"
    reading = read_conversation(turns, None, model, VOCAB)
    assert reading.turns == [("A", ["it", "'", "s", "a", "dog"])]
    assert reading.report.unknown_tokens == 0


# --- long conversations ---------------------------------------------------------------------


def test_a_long_conversation_is_read_through_its_last_turns(client):
    window = client.app.state.engine.model.config.max_context
    turns = [
        {"speaker": "AB"[i % 2], "text": f"turn {i}: do you have any pets"} for i in range(2000)
    ]
    long = respond(client, conversation=turns, num_samples=4, seed=3)
    tail = respond(client, conversation=turns[-window:], num_samples=4, seed=3)
    assert long["responses"] == tail["responses"]
    assert long["responder"] == tail["responder"] == "A"
    assert (long["input"]["turns"], long["input"]["turns_read"]) == (2000, window)
    assert long["input"]["tokens"] == tail["input"]["tokens"]


def test_the_responder_is_found_before_the_window():
    model = tiny_model()
    turns = [("C", "hi"), *[("A", "do you have any pets")] * 30]
    assert read_conversation(turns, None, model, VOCAB).responder == "C"
    assert read_conversation(turns, "B", model, VOCAB).responder == "B"


def test_the_window_is_what_the_model_would_read_of_the_whole_conversation():
    model = tiny_model()
    turns = [("AB"[i % 2], " ".join(WORDS[i % 7 :] * 5)) for i in range(25)]
    reading = read_conversation(turns, None, model, VOCAB)
    whole = context_batch([[(s, tokenize(t, "words")) for s, t in turns]], VOCAB)
    window = context_batch([reading.turns], VOCAB)
    for name in ("context_floor", "context_lengths"):
        assert torch.equal(getattr(whole, name), getattr(window, name)), name

    def context_tokens(batch):
        return [[i for i in batch.utterances[row].tolist() if i] for row in batch.context_index[0]]

    assert context_tokens(whole) == context_tokens(window)
