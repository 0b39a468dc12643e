"""The service's own routes: ``/health``, ``/ready`` (liveness, readiness), ``/info`` (the model
and the engine) and ``/respond`` (sampled responses to a conversation)."""

from __future__ import annotations

import math

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from model.cvae import num_parameters
from service.dependencies import ANSWER_ERRORS, AnyEngine, ReadyEngine, respond_to
from service.engine import InferenceEngine
from service.schemas import (
    LIMITS,
    Info,
    ModelSummary,
    RespondRequest,
    RespondResponse,
    SampledResponse,
    Status,
)

router = APIRouter()


@router.get("/health", response_model=Status, responses={503: {"model": Status}})
async def health(engine: AnyEngine):
    """Liveness: the process serves. 503 only if the model failed to load."""
    if engine.state == "failed":
        return JSONResponse({"status": "failed", "error": engine.error}, status_code=503)
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: {"model": Status}})
async def ready(engine: AnyEngine):
    """Readiness: 200 once the model is loaded, 503 (loading or failed) until then."""
    if engine.state != "ready":
        return JSONResponse(
            {"status": engine.state, "error": engine.error},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return Status(status="ready")


@router.get("/info", response_model=Info, responses={503: ANSWER_ERRORS[503]})
async def info(engine: ReadyEngine):
    """The model's variant and dimensions, vocabulary size, device, checkpoint, engine."""
    return info_of(engine)


def info_of(engine: InferenceEngine) -> Info:
    """What /info shows of a ready engine: its model, device and checkpoint, its settings,
    queue and counters, and the request limits."""
    model, vocab = engine.model, engine.vocab
    assert model is not None and vocab is not None
    cfg, c = model.config, engine.config
    return Info(
        variant=cfg.variant,
        checkpoint=str(engine.checkpoint) if engine.checkpoint else None,
        device=str(engine.device),
        vocab_size=len(vocab),
        dims={
            k: getattr(cfg, k)
            for k in ("embed_dim", "utt_hidden", "ctx_hidden", "dec_hidden", "latent_dim")
        },
        max_context=cfg.max_context,
        max_utt_len=cfg.max_utt_len,
        parameters=num_parameters(model),
        metadata=engine.metadata,
        engine={
            "batching": c.batching,
            "max_batch_size": c.max_batch_size,
            "max_wait_ms": c.max_wait_ms,
            "queue_size": c.queue_size,
            "timeout_s": c.timeout_s,
            "torch_threads": engine.torch_threads,
            "decode_dtype": str(engine.decode_dtype).removeprefix("torch."),
            "queue_depth": engine.queue_depth(),
            "backlog_s": round(engine.backlog_seconds(), 3),
            "stats": engine.stats.as_dict(),
        },
        limits=LIMITS,
    )


@router.post("/respond", response_model=RespondResponse, responses=ANSWER_ERRORS)
async def respond(body: RespondRequest, engine: ReadyEngine):
    """Sample ``num_samples`` responses to the conversation."""
    result, report = await respond_to(
        engine,
        [(t.speaker, t.text) for t in body.conversation],
        body.responder,
        num_samples=body.num_samples,
        max_length=body.max_length,
        decoding=body.decoding,
        temperature=body.temperature,
        seed=body.seed,
        options=body.decoding_options(),
    )
    return RespondResponse(
        responses=[
            SampledResponse(
                text=r.text,
                log_prob=r.log_prob if math.isfinite(r.log_prob) else None,
                num_tokens=len(r.tokens),
            )
            for r in result.responses
        ],
        responder=result.responder,
        input=report,
        model=ModelSummary(
            name=engine.name, variant=engine.model.config.variant, device=str(engine.device)
        ),
    )
