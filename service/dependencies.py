"""What the routes share: the engine as a dependency (:data:`AnyEngine`, :data:`ReadyEngine`),
and, for those that answer a conversation, one call from turns of raw text to sampled
responses, with the engine's errors as HTTP statuses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.conversation import read_conversation
from service.engine import (
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    EngineTimeout,
    GenerationRequest,
    GenerationResult,
    InferenceEngine,
)
from service.schemas import ErrorDetail, InputReport, SamplingReport

# The statuses of a route that answers a conversation, besides 200 and 422 (for its OpenAPI).
ANSWER_ERRORS: dict[int | str, dict] = {
    400: {"model": ErrorDetail, "description": "Body is not UTF-8 text"},
    413: {"model": ErrorDetail, "description": "Request body too large"},
    503: {"model": ErrorDetail, "description": "Model not loaded yet, or overloaded"},
    504: {"model": ErrorDetail, "description": "Not answered within the time limit"},
}


async def get_engine(request: Request) -> InferenceEngine:
    """The app's engine (``create_app`` puts it in ``app.state``), in whatever state it is.

    ``async`` although it awaits nothing: see :func:`get_ready_engine`.
    """
    return request.app.state.engine


async def get_ready_engine(request: Request) -> InferenceEngine:
    """The app's engine, once its model is loaded; until then 503 with Retry-After.

    ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop per request that cost ~20% of the requests/s at 16 clients
    (benchmarks/service_load.py).
    """
    engine: InferenceEngine = request.app.state.engine
    try:
        engine.check_ready()
    except EngineNotReady as e:
        raise HTTPException(503, str(e), {"Retry-After": str(e.retry_after)}) from None
    return engine


AnyEngine = Annotated[InferenceEngine, Depends(get_engine)]
ReadyEngine = Annotated[InferenceEngine, Depends(get_ready_engine)]


async def respond_to(
    engine: InferenceEngine,
    turns: Sequence[tuple[str, str]],
    responder: str | None,
    **sampling,
) -> tuple[GenerationResult, InputReport]:
    """Sample responses to ``turns`` (speaker, raw text), oldest first; ``sampling``: the other
    fields of GenerationRequest (num_samples, max_length, decoding, temperature, seed, options,
    rerank).

    ``engine`` is one that :func:`get_ready_engine` let through (:data:`ReadyEngine`).
    """
    reading = read_conversation(turns, responder, *engine.loaded())
    request = GenerationRequest(turns=reading.turns, responder=reading.responder, **sampling)
    try:
        result = await engine.generate(request)
    except (EngineNotReady, EngineOverloaded) as e:
        raise HTTPException(503, str(e), {"Retry-After": str(e.retry_after)}) from None
    except EngineTimeout as e:
        raise HTTPException(504, str(e)) from None
    except EngineError as e:  # a bug, logged by the engine; the server keeps serving
        raise HTTPException(500, str(e)) from None
    return result, reading.report


def sampling_report(result: GenerationResult, requested: int, rerank: str) -> SamplingReport:
    """What the response says of the latent samples drawn for it (and if they fell short)."""
    returned = len(result.responses)
    warning = None
    if returned < requested:
        warning = (
            f"only {returned} distinct responses in {result.drawn} latent samples (asked for "
            f"{requested}); raise max_draws, or sample the words (decoding='sample') for more "
            "variety"
        )
    return SamplingReport(
        requested=requested,
        returned=returned,
        drawn=result.drawn,
        distinct=result.distinct,
        rerank=rerank,
        warning=warning,
    )
