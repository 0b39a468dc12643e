"""The service's own routes: ``/health``, ``/ready`` (liveness, readiness), ``/info`` (the model
and the engine) and ``/respond`` (sampled responses to a conversation)."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath, PureWindowsPath

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from model.cvae import num_parameters
from service.dependencies import (
    ANSWER_ERRORS,
    AnyEngine,
    ReadyEngine,
    respond_to,
    sampling_report,
)
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
    """The model's variant and dimensions, vocabulary size, device, checkpoint; with
    ``--info-detail full`` also the engine's settings and counters and the training metadata."""
    return info_of(engine)


def info_of(engine: InferenceEngine) -> Info:
    """What /info shows of a ready engine: its model, device and checkpoint (its name: no path
    of the server's disk), the request limits and, as ``--info-detail`` says, the checkpoint's
    scalar metadata or all of it with the engine's settings, queue and counters."""
    model, vocab = engine.loaded()
    cfg, c = model.config, engine.config
    full = c.info_detail == "full"
    metadata = engine.metadata if isinstance(engine.metadata, dict) else {}
    if not full:
        metadata = {k: v for k, v in metadata.items() if not isinstance(v, (dict, list))}
    return Info(
        variant=cfg.variant,
        checkpoint=Path(engine.checkpoint).name if engine.checkpoint else None,
        device=str(engine.device),
        vocab_size=len(vocab),
        dims={
            k: getattr(cfg, k)
            for k in ("embed_dim", "utt_hidden", "ctx_hidden", "dec_hidden", "latent_dim")
        },
        max_context=cfg.max_context,
        max_utt_len=cfg.max_utt_len,
        parameters=num_parameters(model),
        metadata=shown(metadata),
        engine=engine_info(engine) if full else None,
        limits=LIMITS,
    )


def engine_info(engine: InferenceEngine) -> dict:
    c = engine.config
    return {
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
    }


def shown(value):
    """A checkpoint's metadata as /info may show it: JSON (NaN and infinities as strings, lone
    surrogates escaped) and no absolute path (only its last part: the server's directories are
    nobody's business)."""
    if isinstance(value, dict):
        return {shown(str(k)): shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute():
            return PurePosixPath(text.replace("\\", "/")).name
        if text.startswith("~"):
            return PurePosixPath(text).name
        return text
    return value


@router.post("/respond", response_model=RespondResponse, responses=ANSWER_ERRORS)
async def respond(body: RespondRequest, engine: ReadyEngine):
    """Sample ``num_samples`` pairwise distinct responses to the conversation, best fit first."""
    rerank = body.rerank_options()
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
        rerank=rerank,
    )
    model, _ = engine.loaded()
    return RespondResponse(
        responses=[
            SampledResponse(
                text=r.text,
                log_prob=r.log_prob if math.isfinite(r.log_prob) else None,
                num_tokens=len(r.tokens),
                fit=r.fit if r.fit is not None and math.isfinite(r.fit) else None,
            )
            for r in result.responses
        ],
        responder=result.responder,
        sampling=sampling_report(result, body.num_samples, rerank.method),
        input=report,
        model=ModelSummary(
            name=engine.name, variant=model.config.variant, device=str(engine.device)
        ),
    )
