"""The example outputs in README.md and docs/ are what the code gives now (scripts/examples.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import examples  # noqa: E402


def test_every_marked_example_is_known_and_present_in_the_readme():
    text = (ROOT / "README.md").read_text()
    names = [m.group(2) for m in examples.blocks(text)]
    assert names == ["respond"]
    for name in examples.FILES:
        for m in examples.blocks((ROOT / name).read_text()):
            assert m.group(2) in examples.EXAMPLES


def test_same_allows_only_log_prob_rounding():
    made = examples.respond_example_text(
        {"responses": [{"text": "yeah", "log_prob": -1.18, "num_tokens": 1}], "responder": "A"}
    )
    near = made.replace("-1.18", "-1.2")
    far = made.replace("-1.18", "-1.3")
    other = made.replace('"yeah"', '"no"')
    assert examples.same(made, made) and examples.same(near, made)
    assert not examples.same(far, made) and not examples.same(other, made)


@pytest.mark.slow
def test_examples_are_current():
    run = subprocess.run(
        [sys.executable, "scripts/examples.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "every example is current"


def test_model_api_page_is_generated_from_the_code():
    run = subprocess.run(
        [sys.executable, "scripts/model_api.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "3"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
