"""benchmarks/gpu_check.py and the cuda paths it drives. On a machine without CUDA the cuda
paths skip (saying so) and what is checked is that they refuse clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from benchmarks.service_process import ServiceProcess, service_env
from eval.config import EvalConfig, EvalError
from eval.switchboard import evaluate
from tests.servers import SHIPPED_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = f"no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda})"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *args]
    return subprocess.run(command, cwd=REPO, env=service_env(), capture_output=True, text=True)


@without_cuda
def test_without_cuda_it_exits_1_with_one_line():
    result = gpu_check()
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    reason = "is a CPU build" if torch.version.cuda is None else "sees no CUDA device"
    assert line.startswith("gpu_check: no CUDA: torch ") and reason in line


@without_cuda
def test_evaluation_on_cuda_is_refused_clearly_without_it():
    config = EvalConfig(checkpoint=str(SHIPPED_CHECKPOINT), device="cuda")
    with pytest.raises(EvalError, match="--device: device cuda, but torch sees no CUDA device"):
        evaluate(config)


@needs_cuda
@pytest.mark.slow
def test_gpu_check_passes_on_a_cuda_machine():
    result = gpu_check("--limit", "40", "--steps", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].startswith("| check") and len(rows) == 2 + 5
    assert "FAILED" not in result.stdout and "on cuda:0" in result.stdout


@needs_cuda
@pytest.mark.slow
def test_the_service_serves_on_cuda(tmp_path):
    with ServiceProcess(SHIPPED_CHECKPOINT, tmp_path / "log", device="cuda") as server:
        server.wait_ready(timeout=300)
        answer = httpx.post(f"{server.url}/respond", json={"conversation": []}, timeout=60).json()
    assert answer["model"]["device"] == "cuda:0" and len(answer["responses"]) == 5
