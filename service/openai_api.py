"""An OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

So that existing clients and tools (the ``openai`` package, chat front-ends) can call the model.
How the chat maps onto this model:

* ``user`` and ``assistant`` messages are the conversation's two speakers, A and B; the
  assistant (B) responds. ``system`` and ``developer`` messages are accepted and ignored: the
  model was trained on telephone conversations and takes no instructions (refusing them would
  refuse most clients, which send one by default).
* ``n`` choices each draw their own latent z, like ``num_samples`` of ``/respond``: pairwise
  distinct, best fit first, chosen as ``/respond`` chooses them; its reranking fields
  (``rerank``, ``candidates``, ``max_draws``, ``mmi_weight``, ``diversity``,
  ``short_reply_tokens``) and ``anti_lm_weight`` are extra body fields here (``extra_body``
  in the ``openai`` package). Fewer choices come back only when the draws ran out, and ``sampling.warning`` says
  so.
* Decoding: ``temperature`` 0 (or ``top_p`` 0) is greedy; a temperature above 0 samples at it,
  with ``top_p`` (default 0.9). With neither given, the service's default: greedy decoding given
  each choice's z. Both with the service's n-gram blocking, repetition penalty and no ``<unk>``.
* ``max_tokens`` (or ``max_completion_tokens``) bounds the tokens of a choice; the model's own
  bound, 60, applies whatever the value. ``stop``: a choice ends before the first stop sequence.
* ``stream: true``: server-sent events in OpenAI's chunk format. The choices are decoded
  together in one batched call (that is what makes the service fast), then streamed word by word.

Errors have OpenAI's shape and statuses (:func:`error_body`), so that OpenAI's clients show the
message: ``{"error": {"message", "type", "param", "code"}}``; a request that does not validate
gets 400 (not FastAPI's 422), naming the first field at fault. A field OpenAI's API does not
define is refused, as OpenAI refuses it; of those it defines, the ones this model cannot honour
are refused when they ask for something (:func:`unsupported`), bookkeeping ones are ignored
(service.schemas' UNSUPPORTED and IGNORED; docs/service.md lists them).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse

from model.decoding import READABLE
from service.dependencies import ReadyEngine, respond_to, sampling_report
from service.engine import Generated, InferenceEngine
from service.schemas import (
    MAX_LENGTH,
    MIN_TEMPERATURE,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    OpenAIError,
    Usage,
)

SPEAKERS = {"user": "A", "assistant": "B"}
RESPONDER = SPEAKERS["assistant"]
DEFAULT_MAX_TOKENS = 40
OWNER = "bncvae"

PREFIX = "/v1"
# The error statuses of this API's routes (for the OpenAPI document; FastAPI's 422 is left out
# of it, service.app: this API answers 400 instead).
API_ERRORS: dict[int | str, dict] = {
    400: {"model": OpenAIError, "description": "Invalid request, or asks what the model can't do"},
    404: {"model": OpenAIError, "description": "No such model"},
    413: {"model": OpenAIError, "description": "Request body too large"},
    503: {"model": OpenAIError, "description": "Model not loaded yet, overloaded, or draining"},
    504: {"model": OpenAIError, "description": "Not answered within the time limit"},
}

router = APIRouter(prefix=PREFIX, tags=["OpenAI-compatible"])


# --- errors, as OpenAI's API gives them ---------------------------------------------------------


class APIError(HTTPException):
    """An error of this API with OpenAI's ``param`` and ``code``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ):
        super().__init__(status, message)
        self.param, self.code = param, code


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def error_body(status: int, message: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, *, param=None, code=None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def is_api_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


# pydantic's location items that name a member of a union, not a field (the others are not
# identifiers: "list[TextPart]", "constrained-str")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def param_of(loc: tuple) -> str | None:
    """A pydantic error's location as OpenAI writes a ``param``: ``messages[0].content``."""
    param = ""
    for item in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(item, int):
            param += f"[{item}]"
        elif str(item).isidentifier() and str(item) not in _TYPE_TAGS:
            param += f".{item}" if param else str(item)
    return param or None


def validation_error(errors: list[dict]) -> JSONResponse:
    """400 for a request that does not validate, worded as OpenAI words it, for one error (the
    first of the deepest, a wrong value before a wrong type: of a union's alternatives, the one
    that got furthest), with how many more there are."""

    def telling(error: dict) -> tuple[int, bool]:
        return len(error.get("loc", ())), not error["type"].endswith("_type")

    first = max(errors, key=telling)  # max() keeps the first of equals
    kind, param = first["type"], param_of(tuple(first.get("loc", ())))
    where = f"'{param}'" if param else "the request body"
    reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    code: str | None
    if kind == "json_invalid":
        message, param, code = (
            f"We could not parse the JSON body of your request: {reason}",
            None,
            None,
        )
    elif kind == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    elif kind == "extra_forbidden":
        message, code = f"Unrecognized request argument supplied: {param}", None
        param = None
    elif kind.endswith("_type") or kind in ("model_attributes_type", "dict_type"):
        message, code = f"Invalid type for {where}: {reason}.", "invalid_type"
    else:
        message, code = f"Invalid value for {where}: {reason}.", "invalid_value"
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more error{'s' if len(errors) > 2 else ''} in the request)"
    return error_response(400, message, param=param, code=code)


def unsupported(body: ChatCompletionRequest) -> APIError | None:
    """The error for the first field that asks for what this model cannot do, if any."""

    def parameter(name: str, why: str) -> APIError:
        return APIError(
            400,
            f"Unsupported parameter: '{name}' is not supported with this model ({why}).",
            param=name,
            code="unsupported_parameter",
        )

    def value(name: str, given, why: str) -> APIError:
        return APIError(
            400,
            f"Unsupported value: '{name}' does not support {given!r} with this model ({why}).",
            param=name,
            code="unsupported_value",
        )

    no_tools = "it cannot call tools or functions"
    if body.tools or body.functions:
        return parameter("tools" if body.tools else "functions", no_tools)
    for name in ("tool_choice", "function_call"):
        choice = getattr(body, name)
        if choice is not None and choice != "none":
            return value(name, choice if isinstance(choice, str) else "a function", no_tools)
    if body.logprobs or body.top_logprobs:
        name = "logprobs" if body.logprobs else "top_logprobs"
        return parameter(name, "it does not report per-token log probabilities")
    if body.logit_bias:
        return parameter("logit_bias", "it samples from its own vocabulary without biases")
    if body.response_format is not None and body.response_format.get("type") != "text":
        kind = body.response_format.get("type")
        return value("response_format.type", kind, "it writes conversational text only")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            return value(
                name,
                getattr(body, name),
                "it applies its own repetition penalty and n-gram blocking; send 0 or omit it",
            )
    if body.audio is not None or (body.modalities and body.modalities != ["text"]):
        return parameter("audio" if body.audio is not None else "modalities", "it writes text only")
    for name in ("reasoning_effort", "verbosity", "web_search_options"):
        if getattr(body, name) is not None:
            return parameter(name, "it is not a reasoning or search model")
    return None


def model_card(engine: InferenceEngine) -> ModelCard:
    created = 0
    if engine.checkpoint is not None:  # when the checkpoint was written
        created = int((engine.checkpoint / "config.json").stat().st_mtime)
    return ModelCard(id=engine.name, created=created, owned_by=OWNER)


@router.get("/models", response_model=ModelList, responses={503: API_ERRORS[503]})
async def list_models(engine: ReadyEngine) -> ModelList:
    """The one model this service serves."""
    return ModelList(data=[model_card(engine)])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE if stream"},
        **API_ERRORS,
    },
)
async def chat_completions(body: ChatCompletionRequest, engine: ReadyEngine):
    """Sample ``n`` assistant replies to the conversation (OpenAI's Chat Completions API)."""
    if body.model != engine.name:
        raise APIError(
            404,
            f"The model {body.model[:100]!r} does not exist; this service serves {engine.name!r}.",
            param="model",
            code="model_not_found",
        )
    refusal = unsupported(body)
    if refusal is not None:
        raise refusal
    turns = [(SPEAKERS[m.role], m.text()) for m in body.messages if m.role in SPEAKERS]
    result, report = await respond_to(
        engine,
        turns,
        RESPONDER,
        num_samples=body.n,
        max_length=min(
            body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS, MAX_LENGTH
        ),
        seed=body.seed,
        rerank=body.rerank_options(),
        **decoding_of(body),
    )
    stops = body.stop_sequences()
    choices = [choice(i, generated, stops) for i, generated in enumerate(result.responses)]
    completion_tokens = sum(len(g.tokens) for g in result.responses)
    completion = ChatCompletion(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=engine.name,
        choices=choices,
        usage=Usage(
            prompt_tokens=report.tokens,
            completion_tokens=completion_tokens,
            total_tokens=report.tokens + completion_tokens,
        ),
        input=report,
        sampling=sampling_report(result, body.n, body.rerank),
    )
    if not body.stream:
        return completion
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return StreamingResponse(
        stream_events(completion, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


def decoding_of(body: ChatCompletionRequest) -> dict:
    """OpenAI's temperature and top_p as this service's decoding, temperature and options."""
    options = replace(READABLE, anti_lm_weight=body.anti_lm_weight)
    if body.temperature is None and body.top_p is None:
        return {"decoding": "greedy", "options": options}
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = READABLE.top_p if body.top_p is None else body.top_p
    if temperature < MIN_TEMPERATURE or top_p == 0.0:  # the limit of both is the argmax
        return {"decoding": "greedy", "options": options}
    return {
        "decoding": "sample",
        "temperature": temperature,
        "options": replace(options, top_p=top_p),
    }


def choice(index: int, generated: Generated, stops: list[str]) -> ChatChoice:
    text, stopped = cut_at_stop(generated.text, stops)
    finished = stopped or generated.finished
    return ChatChoice(
        index=index,
        message=AssistantMessage(content=text),
        finish_reason="stop" if finished else "length",
    )


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence in it, and whether there was one."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


async def stream_events(completion: ChatCompletion, include_usage: bool):
    """The completion as OpenAI's ``chat.completion.chunk`` events, then ``[DONE]``."""

    def event(choices: list[dict], **extra) -> str:
        chunk = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    usage = {"usage": None} if include_usage else {}
    for c in completion.choices:
        first = {"role": "assistant", "content": ""}
        yield event([{"index": c.index, "delta": first, "finish_reason": None}], **usage)
        for word in re.findall(r"\s*\S+", c.message.content):
            delta = {"content": word}
            yield event([{"index": c.index, "delta": delta, "finish_reason": None}], **usage)
        end = {"index": c.index, "delta": {}, "finish_reason": c.finish_reason}
        yield event([end], **usage)
    if include_usage:
        yield event([], usage=completion.usage.model_dump())
    yield "data: [DONE]\n\n"
