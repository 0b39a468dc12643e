"""Smoke run of the service load benchmark (the numbers themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_service_load_benchmark_prints_its_table_and_targets():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "service_load.py"),
            *("--random-tiny", "--clients", "1", "16", "--requests-per-client", "2"),
            *("--rounds", "1", "--time-budget", "20", "--torch-threads", "1"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "bare decode (in-process model.sample_responses)" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["on"], ["off"])]
    assert [(r[0], r[1]) for r in rows] == [("on", "1"), ("on", "16"), ("off", "1"), ("off", "16")]
    for r in rows:  # requests answered (at least 30 per level), errors
        assert (int(r[2]), r[3]) == (max(30, 2 * int(r[1])), "0")
    assert "target: p50 at 1 client" in out and "target: req/s at 16 clients" in out
