"""The service's start-up: what it imports, the phases it times and logs
(``startup:``, benchmarks/service_startup.py), and the checkpoint loading it times."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import torch

import model.timing
from benchmarks.service_process import service_env
from model.checkpoint import load_pretrained
from model.timing import Phases, process_seconds
from tests.servers import REPO, SHIPPED_CHECKPOINT, running_service

# What serving must never import: the training and evaluation packages and their libraries, and
# torch.compile's machinery (the Docker image leaves out SymPy, which torch._dynamo imports).
NOT_FOR_SERVING = (
    "training",
    "eval",
    "gensim",
    "nltk",
    "scipy",
    "pyarrow",
    "sacrebleu",
    "matplotlib",
    "pandas",
    "sympy",
    "torch._dynamo",
    "torch._inductor",
)

SERVE_ONE_REQUEST = f"""
import asyncio, json, sys
from pathlib import Path
import service.__main__, service.app, service.server
from service.config import ServiceConfig
from service.engine import GenerationRequest, InferenceEngine

async def serve():
    config = ServiceConfig(checkpoint=Path({str(SHIPPED_CHECKPOINT)!r}), torch_threads=1)
    engine = InferenceEngine.from_checkpoint(config)
    await engine.start()
    await engine.wait_ready(120)
    result = await engine.generate(GenerationRequest([("A", ["hello"])], num_samples=2))
    await engine.stop()
    return len(result.responses) > 0

answered = asyncio.run(serve())
banned = {NOT_FOR_SERVING!r}
print(json.dumps({{
    "answered": answered,
    "torch": "torch" in sys.modules,
    "imported": sorted(m for m in sys.modules
                       if any(m == b or m.startswith(b + ".") for b in banned)),
}}))
"""


@pytest.mark.slow
def test_serving_imports_nothing_of_training_evaluation_or_torch_compile():
    """Importing the app, loading the shipped checkpoint and answering a request."""
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST],
        cwd=REPO,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert found == {"answered": True, "torch": True, "imported": []}


def test_phases_time_each_step_from_the_end_of_the_previous(monkeypatch):
    clock = iter([10.5, 11.0, 12.25])
    monkeypatch.setattr(model.timing.time, "perf_counter", lambda: next(clock))
    phases = Phases(start=9.0)
    assert phases.lap("read") == 1.5
    assert phases.lap("verify") == 0.5
    assert phases.lap("read") == 2.75  # a phase that comes back adds up
    assert phases.seconds == {"read": 2.75, "verify": 0.5}
    assert str(phases) == "read=2.75s verify=0.50s"


def test_process_seconds_counts_from_the_process_start():
    code = "import time; time.sleep(0.5); import model.timing as t; print(t.process_seconds())"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    outside = time.perf_counter() - started
    inside = float(proc.stdout)
    assert 0.5 <= inside <= outside + 0.02  # /proc's start time has a 10 ms resolution
    ours = process_seconds()
    assert ours is not None and ours > inside  # this process has run longer than that one


def test_load_pretrained_times_its_steps_and_gives_the_model_its_own_float32_tensors():
    phases = Phases()
    model, _ = load_pretrained(SHIPPED_CHECKPOINT, phases=phases)
    assert list(phases.seconds) == ["read", "verify", "weights", "build"]
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}  # stored as float16
    # one tensor each (the shared embedding once), none a view of another or of the file
    storages = {p.untyped_storage().data_ptr() for p in params.values()}
    assert len(storages) == len(params)
    assert [n for n, p in params.items() if not p.requires_grad] == ["recognition.mu_bn.weight"]
    assert model.decoder.embedding.weight is model.utt_encoder.embedding.weight
    again, _ = load_pretrained(SHIPPED_CHECKPOINT, verify=False)
    with torch.no_grad():
        params["decoder.out.weight"].add_(1.0)  # writable, and the next load is unaffected
    assert torch.equal(again.decoder.out.weight + 1.0, params["decoder.out.weight"])


@pytest.mark.slow
def test_the_startup_log_line_names_every_phase(tmp_path):
    log = tmp_path / "server.log"
    with running_service(SHIPPED_CHECKPOINT, log, "--torch-threads", "1"):
        pass
    lines = [line for line in log.read_text().splitlines() if "startup: " in line]
    assert len(lines) == 1, log.read_text()
    line = lines[0]
    main, model_part = line.split("; the model: ")
    seconds = {k: float(v) for k, v in re.findall(r"([a-z_]+)=([0-9.]+)s", line)}
    main_phases = re.findall(r"([a-z_]+)=[0-9.]+s", main.split("started: ")[1].split(";")[0])
    assert main_phases == ["python", "options", "imports", "app", "serve"]
    assert re.findall(r"([a-z_]+)=", model_part) == [
        "read",
        "verify",
        "weights",
        "build",
        "dtype",
        "warm_up",
        "calibrate",
    ]
    # the main thread's phases add up to ready (each rounded to 10 ms); it listened before
    assert abs(sum(seconds[p] for p in main_phases) - seconds["ready"]) <= 0.035
    assert seconds["listening"] <= seconds["ready"]
    assert "ready=" in main and "after the process started" in main
    ready_lines = [line for line in log.read_text().splitlines() if "model ready on cpu in" in line]
    assert len(ready_lines) == 1 and "calibrate=" in ready_lines[0]
