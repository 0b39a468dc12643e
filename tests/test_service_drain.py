"""SIGTERM drains a real ``python -m service``: what it admitted is answered, new work gets 503,
and it exits with 0 (service/server.py's DrainingServer)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from benchmarks.service_process import ServiceProcess
from tests.servers import SHIPPED_CHECKPOINT

# Long requests: sampled at a high temperature, a response seldom ends before max_length; and
# each request is a model call of its own (--no-batching), so the queue drains one at a time.
LONG = {
    "conversation": [{"speaker": "A", "text": "so what do you think about the weather"}],
    "num_samples": 8,
    "max_length": 60,
    "decoding": "sample",
    "temperature": 5.0,
}
ADMITTED = 6


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_sigterm_answers_what_was_admitted_refuses_new_work_and_exits_0(tmp_path):
    log = tmp_path / "server.log"
    with ServiceProcess(SHIPPED_CHECKPOINT, log, "--torch-threads", "1", "--no-batching") as server:
        server.wait_ready(timeout=120)
        url = server.url
        with ThreadPoolExecutor(ADMITTED) as pool:
            answers = [
                pool.submit(httpx.post, f"{url}/respond", json=LONG, timeout=60)
                for _ in range(ADMITTED)
            ]
            deadline = time.monotonic() + 30
            while metric(url, "bncvae_requests_admitted_total") < ADMITTED:
                assert time.monotonic() < deadline, "the requests were not admitted"
                time.sleep(0.01)
            answered_before = metric(url, "bncvae_requests_answered_total")
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)  # the signal handled (the server ticks every 0.1 s)

            # Draining: new work and readiness refused, liveness kept.
            refused = httpx.post(f"{url}/respond", json={"conversation": []}, timeout=10)
            assert refused.status_code == 503, refused.text
            assert "shutting down" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "1"
            ready = httpx.get(f"{url}/ready", timeout=10)
            assert (ready.status_code, ready.json()["status"]) == (503, "draining")
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            shed = metric(url, 'bncvae_requests_shed_total{reason="draining"}')

            statuses = [a.result().status_code for a in answers]
        assert answered_before < ADMITTED, "all answered before SIGTERM: the test proves nothing"
        assert statuses == [200] * ADMITTED
        assert all(len(a.result().json()["responses"]) == 8 for a in answers)
        assert shed == 1
        assert server.proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "SIGTERM: draining" in text and "drained in" in text
