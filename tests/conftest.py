from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synthetic import write_synthetic_zhao  # noqa: E402
from training.prepare import DEFAULT_DATA as SHARED_DATA  # noqa: E402


def require_shared_data() -> Path:
    if not (SHARED_DATA / "zhao" / "test.jsonl").exists() or not (SHARED_DATA / "swda").is_dir():
        pytest.skip(f"real Switchboard data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory) -> Path:
    """A prepared corpus of small synthetic dialogs (python -m training.prepare on them)."""
    from training.prepare import PrepareConfig, prepare

    base = tmp_path_factory.mktemp("synthetic")
    zhao = write_synthetic_zhao(base / "zhao")
    out = base / "prepared"
    prepare(PrepareConfig(out=str(out), zhao=str(zhao), swda=None, progress=False))
    return out
