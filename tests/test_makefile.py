"""The Makefile's targets: `make help` lists each, `make lint` runs ruff and mypy (as a dry run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def make(*args: str) -> str:
    run = subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return run.stdout


def test_help_lists_every_phony_target():
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    listed = re.findall(r"^  make (\S+)", make("help"), re.M)
    assert sorted(listed) == sorted(phony)


def test_lint_runs_ruff_check_format_check_and_mypy():
    # -n: the commands it would run; -o: without the set-up a fresh clone would do first
    out = make("-n", "-o", ".venv/.installed-dev", "lint")
    assert "-m ruff check ." in out and "-m ruff format --check ." in out
    assert re.search(r"-m mypy$", out, re.M)  # the files are pyproject.toml's [tool.mypy]
