"""The OpenAI-compatible API, called with the real ``openai`` client on a real server (the shipped
checkpoint, served by uvicorn on 127.0.0.1)."""

from __future__ import annotations

from collections import defaultdict

import openai
import pytest

from service.openai_api import cut_at_stop, decoding_of
from service.schemas import ChatCompletionRequest
from tests.servers import SHIPPED_CHECKPOINT, running_service

MODEL = SHIPPED_CHECKPOINT.name
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},  # accepted and ignored
    {"role": "user", "content": "Hi, do you have any pets?"},
    {"role": "assistant", "content": "Yes, we have a dog and two cats."},
    {"role": "user", "content": "Oh nice. What kind of dog is it?"},
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    log = tmp_path_factory.mktemp("openai") / "server.log"
    with running_service(SHIPPED_CHECKPOINT, log, "--torch-threads", "1") as base:
        with openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0) as c:
            yield c


def contents(completion) -> list[str]:
    return [c.message.content for c in completion.choices]


def test_models_lists_the_served_checkpoint(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.list().data[0].owned_by == "bncvae"


def test_five_choices_each_with_its_own_z(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=CONVERSATION, n=5, seed=7, max_tokens=20
    )
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert [c.index for c in completion.choices] == [0, 1, 2, 3, 4]
    for c in completion.choices:
        assert c.message.role == "assistant"
        assert c.message.content.strip() and "<unk>" not in c.message.content
        assert c.finish_reason in ("stop", "length")
    assert len(set(contents(completion))) > 1  # different z, different replies
    usage = completion.usage
    assert usage.prompt_tokens == 6 + 8 + 8  # the model read the user's and assistant's words only
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens >= sum(len(t.split()) for t in contents(completion))
    # seeded: the same again; and the system message changed nothing
    again = client.chat.completions.create(
        model=MODEL, messages=CONVERSATION[1:], n=5, seed=7, max_tokens=20
    )
    assert contents(again) == contents(completion)


def test_streaming_sends_the_same_choices_in_openai_chunks(client):
    kwargs = dict(model=MODEL, messages=CONVERSATION, n=3, seed=11, max_tokens=20)
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    text, finish, roles, usage = defaultdict(str), {}, {}, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL
        if not chunk.choices:  # the last chunk: usage only
            usage = chunk.usage
            continue
        for c in chunk.choices:
            assert c.index not in finish, "a chunk after the choice finished"
            if c.delta.role:
                roles[c.index] = c.delta.role
            text[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}
    assert [text[i] for i in range(3)] == contents(whole)
    assert [finish[i] for i in range(3)] == [c.finish_reason for c in whole.choices]
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens


def test_temperature_top_p_max_tokens_and_stop(client):
    def ask(**kwargs):
        return client.chat.completions.create(model=MODEL, messages=CONVERSATION, **kwargs)

    greedy = ask(n=4, seed=3)
    assert contents(ask(n=4, seed=3, temperature=0)) == contents(greedy)
    assert contents(ask(n=4, seed=3, temperature=1.0, top_p=0)) == contents(greedy)
    sampled = [contents(ask(n=4, seed=s, temperature=1.5, top_p=1.0)) for s in range(3)]
    assert len({tuple(s) for s in sampled}) == 3  # sampling differs from seed to seed

    short = ask(n=4, seed=3, max_tokens=1)
    for c in short.choices:
        assert len(c.message.content.split()) <= 1
    assert short.usage.completion_tokens <= 4
    assert "length" in {c.finish_reason for c in short.choices}
    # more than the model's limit is fine: max_tokens is an upper bound
    assert len(ask(n=1, seed=3, max_completion_tokens=4096).choices) == 1

    i, text = next((i, t) for i, t in enumerate(contents(greedy)) if " " in t)
    word = text.split()[-1]
    stopped = ask(n=4, seed=3, stop=[" " + word, "zzz"]).choices[i]
    assert stopped.message.content == text[: text.index(" " + word)]
    assert stopped.finish_reason == "stop"


# The message each error carries, as the openai client shows it (``str(exception)``): OpenAI's
# shape ({"error": {"message", "type", "param", "code"}}) is what lets the client find it.
REFUSED = [
    (
        {"model": "gpt-4o"},
        openai.NotFoundError,
        f"Error code: 404 - The model 'gpt-4o' does not exist; this service serves '{MODEL}'.",
        ("model", "model_not_found"),
    ),
    (
        {"n": 33},
        openai.BadRequestError,
        "Error code: 400 - Invalid value for 'n': Input should be less than or equal to 32.",
        ("n", "invalid_value"),
    ),
    (
        {"temperature": 2.5},
        openai.BadRequestError,
        "Error code: 400 - Invalid value for 'temperature': Input should be less than or equal "
        "to 2.",
        ("temperature", "invalid_value"),
    ),
    (
        {"messages": []},
        openai.BadRequestError,
        "Error code: 400 - Invalid value for 'messages': List should have at least 1 item after "
        "validation, not 0.",
        ("messages", "invalid_value"),
    ),
    (
        {"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]},
        openai.BadRequestError,
        "Error code: 400 - Invalid value for 'messages[0].role': Input should be 'system', "
        "'developer', 'user' or 'assistant'. (1 more error in the request)",
        ("messages[0].role", "invalid_value"),
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        openai.BadRequestError,
        "Error code: 400 - Invalid value for 'messages[0].content[0].type': Input should be "
        "'text'. (3 more errors in the request)",
        ("messages[0].content[0].type", "invalid_value"),
    ),
    (
        {"stop": ["a", "b", "c", "d", "e"]},
        openai.BadRequestError,
        "Error code: 400 - Invalid value for 'stop': List should have at most 4 items after "
        "validation, not 5. (1 more error in the request)",
        ("stop", "invalid_value"),
    ),
    (
        {"extra_body": {"frobnicate": True}},
        openai.BadRequestError,
        "Error code: 400 - Unrecognized request argument supplied: frobnicate",
        (None, None),
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        openai.BadRequestError,
        "Error code: 400 - Unsupported parameter: 'tools' is not supported with this model (it "
        "cannot call tools or functions).",
        ("tools", "unsupported_parameter"),
    ),
    (
        {"logprobs": True, "top_logprobs": 2},
        openai.BadRequestError,
        "Error code: 400 - Unsupported parameter: 'logprobs' is not supported with this model "
        "(it does not report per-token log probabilities).",
        ("logprobs", "unsupported_parameter"),
    ),
    (
        {"response_format": {"type": "json_object"}},
        openai.BadRequestError,
        "Error code: 400 - Unsupported value: 'response_format.type' does not support "
        "'json_object' with this model (it writes conversational text only).",
        ("response_format.type", "unsupported_value"),
    ),
    (
        {"frequency_penalty": 0.5},
        openai.BadRequestError,
        "Error code: 400 - Unsupported value: 'frequency_penalty' does not support 0.5 with this "
        "model (it applies its own repetition penalty and n-gram blocking; send 0 or omit it).",
        ("frequency_penalty", "unsupported_value"),
    ),
]


@pytest.mark.parametrize("kwargs, error, message, param_code", REFUSED)
def test_refused_requests_carry_the_servers_message(client, kwargs, error, message, param_code):
    request = {"model": MODEL, "messages": CONVERSATION, **kwargs}
    with pytest.raises(error) as e:
        client.chat.completions.create(**request)
    assert str(e.value) == message
    assert (e.value.param, e.value.code) == param_code
    assert e.value.type == "invalid_request_error"
    assert e.value.body["message"] == message.split(" - ", 1)[1]


def test_fields_that_change_nothing_are_accepted_and_ignored(client):
    kwargs = dict(model=MODEL, messages=CONVERSATION, n=2, seed=5, max_tokens=10)
    plain = client.chat.completions.create(**kwargs)
    ignored = client.chat.completions.create(
        **kwargs,
        user="u-1",
        metadata={"team": "x"},
        store=False,
        parallel_tool_calls=False,
        tool_choice="none",
        response_format={"type": "text"},
        frequency_penalty=0,
        presence_penalty=0.0,
        modalities=["text"],
    )
    assert contents(ignored) == contents(plain)
    # a completion's message sent back in the history, as clients do
    history = [*CONVERSATION, plain.choices[0].message.model_dump(), CONVERSATION[-1]]
    assert len(client.chat.completions.create(**{**kwargs, "messages": history}).choices) == 2


# --- the mapping, without a server ----------------------------------------------------------


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=MODEL, messages=CONVERSATION, **fields)


def test_decoding_of_temperature_and_top_p():
    def summary(**fields):
        d = decoding_of(request(**fields))
        return d["decoding"], d.get("temperature"), d["options"].top_p

    assert summary() == ("greedy", None, 0.9)  # the service's default
    assert summary(temperature=0) == ("greedy", None, 0.9)
    assert summary(temperature=0.001) == ("greedy", None, 0.9)
    assert summary(top_p=0) == ("greedy", None, 0.9)
    assert summary(temperature=0.7) == ("sample", 0.7, 0.9)
    assert summary(top_p=0.5) == ("sample", 1.0, 0.5)
    assert summary(temperature=1.3, top_p=1) == ("sample", 1.3, 1.0)
    assert not decoding_of(request(temperature=0.7))["options"].allow_unk
    assert decoding_of(request())["options"].anti_lm_weight == 0.0
    for fields in ({}, {"temperature": 0.7}, {"top_p": 0}):
        assert decoding_of(request(anti_lm_weight=0.3, **fields))["options"].anti_lm_weight == 0.3


def test_cut_at_stop():
    assert cut_at_stop("i have a dog too", []) == ("i have a dog too", False)
    assert cut_at_stop("i have a dog too", ["dog", "have"]) == ("i ", True)
    assert cut_at_stop("i have a dog too", ["cat"]) == ("i have a dog too", False)
