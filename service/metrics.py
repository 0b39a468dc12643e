"""``GET /metrics``: the service's metrics in Prometheus' text format (prometheus-client).

Each app has its own :class:`ServiceMetrics` and registry (``app.state.metrics``, reached through
the :data:`Metrics` dependency): two apps in one process (tests) count apart. What it holds:

* HTTP, counted by :class:`MetricsMiddleware` around the whole app (so the body limits' 413 and
  408 count too): ``bncvae_http_requests_total{method,route,status}`` and the latency histogram
  ``bncvae_http_request_duration_seconds{method,route}``. ``route`` is the path template (no
  ids or typos in the labels); a path no route matches is ``unmatched``. Connections the server
  refuses before the app sees a request (over ``--max-connections``, oversized headers) are not
  requests here; uvicorn logs them.
* The engine, read from it at each scrape (:class:`EngineCollector`): queue depth and the queued
  work (units and estimated seconds), requests admitted and shed with a 503 (by reason),
  requests abandoned by their clients (queued or decoding) and model calls stopped for them,
  timeouts, model calls and their batch sizes (a histogram of contexts per call), tokens
  decoded, model seconds, the decoding speed, the model's load time.
* ``bncvae_build_info``: 1, labelled with the package version, checkpoint, device and torch.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.routing import Match

from service.engine import InferenceEngine

PREFIX = "bncvae"
# Request latency: from a health probe (~1 ms) to a request that waits for its time limit (30 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Contexts per model call: powers of two up to the largest batch (max_batch_size, 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNMATCHED = "unmatched"


class ServiceMetrics:
    """The registry of one app: the HTTP metrics it counts, the engine's it reads at scrape."""

    def __init__(self, engine: InferenceEngine):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by method, route (path template) and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from a request's arrival to its response's last byte, by method and route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """The engine's state and counters, as metrics, read when scraped."""

    def __init__(self, engine: InferenceEngine):
        self.engine = engine

    def collect(self):
        engine, stats = self.engine, self.engine.stats
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting for a model call.", engine.queue_depth()
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_queued_work_units",
            "Decoding admitted and not done yet, in work units (samples x steps, plus each "
            "model call's fixed part).",
            engine.backlog_units(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_queued_work_seconds",
            "The queued work's estimated model time, at the recently measured speed.",
            engine.backlog_seconds(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_requests_admitted",
            "Requests admitted to the queue.",
            stats.admitted,
        )
        shed = CounterMetricFamily(
            f"{PREFIX}_requests_shed",
            "Requests refused with 503: too much work queued (overloaded), shutting down "
            "(draining), or admitted but no longer answerable in time when their model call was "
            "to start (late).",
            labels=["reason"],
        )
        shed.add_metric(["overloaded"], stats.rejected)
        shed.add_metric(["draining"], stats.refused_draining)
        shed.add_metric(["late"], stats.shed)
        yield shed
        abandoned = CounterMetricFamily(
            f"{PREFIX}_requests_abandoned",
            "Admitted requests whose client left: while queued (dropped without a model call) "
            "or while decoded.",
            labels=["when"],
        )
        abandoned.add_metric(["queued"], stats.abandoned_queued)
        abandoned.add_metric(["decoding"], stats.abandoned_decoding)
        yield abandoned
        yield CounterMetricFamily(
            f"{PREFIX}_model_calls_stopped",
            "Model calls stopped before their end: every client of theirs had left.",
            stats.stopped_calls,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_requests_timed_out",
            "Admitted requests not answered within the time limit (504).",
            stats.timeouts,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_requests_answered", "Admitted requests answered.", stats.requests
        )
        yield batch_histogram(stats.batch_sizes)
        yield CounterMetricFamily(
            f"{PREFIX}_decoded_tokens",
            "Tokens of the responses decoded (every sample's, end-of-sentence not counted); "
            "rate() of it is the tokens decoded per second.",
            stats.tokens,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_model_seconds", "Time spent in model calls.", stats.model_seconds
        )
        speed = stats.tokens / stats.model_seconds if stats.model_seconds else 0.0
        yield GaugeMetricFamily(
            f"{PREFIX}_decode_tokens_per_second",
            "Tokens decoded per second of model time, since the start (the model's speed "
            "while it works; throughput is rate(bncvae_decoded_tokens_total)).",
            speed,
        )
        if engine.load_seconds is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_model_load_seconds",
                "Time to load the checkpoint and warm the model up.",
                engine.load_seconds,
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_model_ready",
            "1 when the engine takes requests, else 0 (loading, draining, failed).",
            1.0 if engine.state == "ready" else 0.0,
        )
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info",
            "1, labelled with the package version, checkpoint, device and torch version.",
            labels=["version", "checkpoint", "device", "torch_version"],
        )
        info.add_metric([package_version(), engine.name, str(engine.device), torch_version()], 1.0)
        yield info


def batch_histogram(batch_sizes) -> HistogramMetricFamily:
    """Contexts per model call, from the engine's exact counts, as cumulative buckets."""
    buckets, total = [], 0
    for bound in BATCH_BUCKETS:
        total = sum(n for size, n in batch_sizes.items() if size <= bound)
        buckets.append((str(bound), total))
    count = sum(batch_sizes.values())
    buckets.append(("+Inf", count))
    return HistogramMetricFamily(
        f"{PREFIX}_batch_size",
        "Contexts decoded together in one model call.",
        buckets=buckets,
        sum_value=sum(size * n for size, n in batch_sizes.items()),
    )


def package_version() -> str:
    try:
        return metadata.version("bncvae")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def torch_version() -> str:
    import torch

    return torch.__version__


class MetricsMiddleware:
    """Counts and times every HTTP request the app answers (pure ASGI: nothing buffered)."""

    def __init__(self, app, metrics: ServiceMetrics, routes: list):
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's, to name the route of a request refused before routing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before it answers, the server answers 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route") or self._match(scope)
            route = getattr(route, "path", UNMATCHED)
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)

    def _match(self, scope):
        for route in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return route
        return None


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


Metrics = Annotated[ServiceMetrics, Depends(get_metrics)]

router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics_endpoint(metrics: Metrics) -> Response:
    """The service's metrics in Prometheus' text exposition format."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
