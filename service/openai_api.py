"""An OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

So that existing clients and tools (the ``openai`` package, chat front-ends) can call the model.
How the chat maps onto this model:

* ``user`` and ``assistant`` messages are the conversation's two speakers, A and B; the
  assistant (B) responds. ``system`` and ``developer`` messages are accepted and ignored: the
  model was trained on telephone conversations and takes no instructions (refusing them would
  refuse most clients, which send one by default).
* ``n`` choices each draw their own latent z, like ``num_samples`` of ``/respond``.
* Decoding: ``temperature`` 0 (or ``top_p`` 0) is greedy; a temperature above 0 samples at it,
  with ``top_p`` (default 0.9). With neither given, the service's default: greedy decoding given
  each choice's z. Both with the service's n-gram blocking, repetition penalty and no ``<unk>``.
* ``max_tokens`` (or ``max_completion_tokens``) bounds the tokens of a choice; the model's own
  bound, 60, applies whatever the value. ``stop``: a choice ends before the first stop sequence.
* ``stream: true``: server-sent events in OpenAI's chunk format. The choices are decoded
  together in one batched call (that is what makes the service fast), then streamed word by word.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import replace

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from model.decoding import READABLE
from service.engine import Generated, InferenceEngine
from service.responding import ANSWER_ERRORS, ReadyEngine, respond_to
from service.schemas import (
    MAX_LENGTH,
    MIN_TEMPERATURE,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ErrorDetail,
    ModelCard,
    ModelList,
    Usage,
)

SPEAKERS = {"user": "A", "assistant": "B"}
RESPONDER = SPEAKERS["assistant"]
DEFAULT_MAX_TOKENS = 40
OWNER = "bncvae"

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])


def model_card(engine: InferenceEngine) -> ModelCard:
    created = 0
    if engine.checkpoint is not None:  # when the checkpoint was written
        created = int((engine.checkpoint / "config.json").stat().st_mtime)
    return ModelCard(id=engine.name, created=created, owned_by=OWNER)


@router.get("/models", response_model=ModelList, responses={503: ANSWER_ERRORS[503]})
async def list_models(engine: ReadyEngine) -> ModelList:
    """The one model this service serves."""
    return ModelList(data=[model_card(engine)])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE if stream"},
        404: {"model": ErrorDetail, "description": "No such model"},
        **ANSWER_ERRORS,
    },
)
async def chat_completions(body: ChatCompletionRequest, engine: ReadyEngine):
    """Sample ``n`` assistant replies to the conversation (OpenAI's Chat Completions API)."""
    if body.model != engine.name:
        raise HTTPException(
            404, f"model {body.model[:100]!r} not found; this service serves {engine.name!r}"
        )
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
    if body.temperature is None and body.top_p is None:
        return {"decoding": "greedy", "options": READABLE}
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = READABLE.top_p if body.top_p is None else body.top_p
    if temperature < MIN_TEMPERATURE or top_p == 0.0:  # the limit of both is the argmax
        return {"decoding": "greedy", "options": READABLE}
    return {
        "decoding": "sample",
        "temperature": temperature,
        "options": replace(READABLE, top_p=top_p),
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
