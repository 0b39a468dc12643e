"""Smoke runs of the service load and start-up benchmarks (their numbers are not asserted), and
the reliability suite's quick form with its targets checked (``make stress``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stress import RUNS

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
    assert "bare decode (in-process model.reranking.distinct_responses)" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["on"], ["off"])]
    assert [(r[0], r[1]) for r in rows] == [("on", "1"), ("on", "16"), ("off", "1"), ("off", "16")]
    for r in rows:  # requests answered (at least 30 per level), errors
        assert (int(r[2]), r[3]) == (max(30, 2 * int(r[1])), "0")
    assert "target: p50 at 1 client" in out and "target: req/s at 16 clients" in out


@pytest.mark.slow
def test_stress_suite_quick_form_meets_its_targets():
    """benchmarks/stress.py --quick --check: every run, the shipped checkpoint, a real server;
    exit 1 on a 5xx other than 503, a 504 for admitted work, goodput under a flood that ignores
    Retry-After below half the undisturbed one, work done for clients that left, a probe not
    answered in 1 s during the slow-client runs, or a dead server."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "stress.py"), "--quick", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("== summary ==")[1].split()
    assert summary == [word for run in RUNS for word in (run, "ok")]


@pytest.mark.slow
def test_service_load_benchmark_compares_reranking_with_none():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "service_load.py"),
            *("--random-tiny", "--clients", "1", "16", "--requests-per-client", "2"),
            *("--rounds", "1", "--time-budget", "20", "--torch-threads", "1"),
            *("--compare-rerank", "--rerank", "likelihood", "--max-length", "8"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] in (["none"], ["likelihood"])
    ]
    assert [(r[0], r[1]) for r in rows] == [
        ("none", "1"), ("none", "16"), ("likelihood", "1"), ("likelihood", "16")
    ]  # fmt: skip
    for r in rows:
        assert (int(r[2]), r[3]) == (max(30, 2 * int(r[1])), "0")
    assert "target: p50 at 1 client, rerank likelihood" in out
    assert "rerank likelihood: " in out and "req/s at 16 clients" in out


@pytest.mark.slow
def test_service_startup_benchmark_prints_the_times_and_the_servers_phases():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "service_startup.py"), "--runs", "2"]
        + ["--", "--torch-threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("CPU: ")
    header = next(line.split() for line in lines if line.startswith("run "))
    assert header[:3] == ["run", "health", "ready"]
    assert {"python", "options", "imports", "serve", "verify", "calibrate"} <= set(header)
    rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"], ["median"])]
    assert [r[0] for r in rows] == ["1", "2", "median"]
    for row in rows:
        assert len(row) == len(header)
        health, ready = float(row[1]), float(row[2])
        assert 0 < health <= ready


def test_marginal_mmi_takes_p_of_r_over_every_other_context_and_never_its_own():
    from benchmarks.marginal_mmi import other_contexts

    picks = other_contexts(6, 5, seed=0).tolist()  # as many as there are others: all of them
    assert [sorted(row) for row in picks] == [[j for j in range(6) if j != i] for i in range(6)]
    assert other_contexts(6, 2, seed=3).tolist() == other_contexts(6, 2, seed=3).tolist()


def test_the_oracle_fit_is_each_candidates_zhao_bleu3_against_its_own_contexts_reference():
    from benchmarks.rerank_sweep import oracle_fit
    from eval.metrics import ZHAO_BLEU_WEIGHTS, zhao_bleu
    from model.reranking import Candidate, RerankOptions
    from model.vocab import Vocabulary

    vocab = Vocabulary.build(["we have a dog and a cat i like dogs".split()])

    def candidate(text: str) -> Candidate:
        ids = vocab.encode(text.split())
        return Candidate(ids=ids, length=len(ids), log_prob=-1.0, finished=True, draw=0)

    references = ["we have a dog".split(), "i like dogs".split()]
    pools = [[candidate("we have a dog"), candidate("i like dogs")], [candidate("i like dogs")]]
    ceiling = oracle_fit(references, pools, vocab)
    options = RerankOptions("likelihood")
    weights = ZHAO_BLEU_WEIGHTS["zhao_bleu3"]
    assert ceiling(pools[0][0], options) == zhao_bleu(references[0], references[0], weights)
    # the same words score against their own context's reference, not the first context's
    assert ceiling(pools[1][0], options) == zhao_bleu(references[1], references[1], weights)
    other = zhao_bleu(references[1], references[0], weights)
    assert ceiling(pools[0][1], options) == other < ceiling(pools[1][0], options)
