"""GET /metrics after real traffic through the app: the values, not just the names."""

from __future__ import annotations

import asyncio

import torch
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.engine import DecodeCost
from tests.test_service import (  # noqa: F401 (tiny_checkpoint: a fixture)
    Gate,
    body,
    make_engine,
    run_in_app,
    tiny_checkpoint,
    wait_until,
)


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_count_the_traffic_the_app_served(tiny_checkpoint):  # noqa: F811
    async def scenario(client, engine):
        engine.cost = DecodeCost(0.0)  # only the queue's size refuses
        gate = Gate(engine.model)
        running = asyncio.create_task(client.post("/respond", json=body(num_samples=3)))
        await asyncio.to_thread(gate.entered.wait, 10)
        queued = [
            asyncio.create_task(client.post("/respond", json=body(num_samples=2))) for _ in range(2)
        ]
        await wait_until(lambda: engine.queue_depth() == 2)
        while_queued = scrape((await client.get("/metrics")).text)
        refused = await client.post("/respond", json=body(num_samples=1))  # the queue is full
        gate.release.set()
        answers = [await running] + [await q for q in queued]
        invalid = await client.post("/respond", json={"conversation": "not a list"})
        chat = await client.post("/v1/chat/completions", json={"model": "x", "messages": []})
        await client.get("/nowhere")
        response = await client.get("/metrics")
        return while_queued, refused, answers, invalid, chat, response

    while_queued, refused, answers, invalid, chat, response = run_in_app(
        tiny_checkpoint, scenario, queue_size=2, torch_threads=1
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert refused.status_code == 503 and invalid.status_code == 422 and chat.status_code == 400
    assert [a.status_code for a in answers] == [200, 200, 200]

    # While two requests waited behind the running one: their depth and work.
    assert value(while_queued, "bncvae_queue_depth") == 2
    assert value(while_queued, "bncvae_queued_work_units") > 0
    assert value(while_queued, "bncvae_queued_work_seconds") == 0  # DecodeCost(0.0): 0 s/unit

    m = scrape(response.text)
    requests = "bncvae_http_requests_total"
    assert value(m, requests, method="POST", route="/respond", status="200") == 3
    assert value(m, requests, method="POST", route="/respond", status="503") == 1
    assert value(m, requests, method="POST", route="/respond", status="422") == 1
    assert value(m, requests, method="POST", route="/v1/chat/completions", status="400") == 1
    assert value(m, requests, method="GET", route="unmatched", status="404") == 1
    assert value(m, requests, method="GET", route="/metrics", status="200") == 1  # the first
    latency = "bncvae_http_request_duration_seconds"
    assert value(m, latency + "_count", method="POST", route="/respond") == 5
    assert value(m, latency + "_bucket", method="POST", route="/respond", le="+Inf") == 5
    assert 0 < value(m, latency + "_sum", method="POST", route="/respond") < 60

    assert value(m, "bncvae_requests_admitted_total") == 3
    assert value(m, "bncvae_requests_answered_total") == 3
    assert value(m, "bncvae_requests_shed_total", reason="overloaded") == 1
    assert value(m, "bncvae_requests_shed_total", reason="draining") == 0
    assert value(m, "bncvae_queue_depth") == 0 and value(m, "bncvae_queued_work_units") == 0

    # Two model calls: the running request alone, then the two queued ones together.
    assert value(m, "bncvae_batch_size_count") == 2
    assert value(m, "bncvae_batch_size_sum") == 3
    assert value(m, "bncvae_batch_size_bucket", le="1") == 1
    assert value(m, "bncvae_batch_size_bucket", le="2") == 2
    assert value(m, "bncvae_batch_size_bucket", le="+Inf") == 2

    tokens = sum(r["num_tokens"] for a in answers for r in a.json()["responses"])
    assert value(m, "bncvae_decoded_tokens_total") == tokens
    model_seconds = value(m, "bncvae_model_seconds_total")
    assert model_seconds > 0
    assert value(m, "bncvae_decode_tokens_per_second") == tokens / model_seconds
    assert value(m, "bncvae_model_load_seconds") > 0
    assert value(m, "bncvae_model_ready") == 1
    info = {
        "version": "0.1.0",
        "checkpoint": tiny_checkpoint.name,
        "device": "cpu",
        "torch_version": torch.__version__,
    }
    assert value(m, "bncvae_build_info", **info) == 1


def test_each_app_counts_its_own_requests(tiny_checkpoint):  # noqa: F811
    first = create_app(make_engine(tiny_checkpoint))
    second = create_app(make_engine(tiny_checkpoint))
    first.state.metrics.observe("GET", "/health", 200, 0.001)
    requests = (
        "bncvae_http_requests_total",
        (("method", "GET"), ("route", "/health"), ("status", "200")),
    )
    assert scrape(first.state.metrics.exposition().decode())[requests] == 1
    assert requests not in scrape(second.state.metrics.exposition().decode())
