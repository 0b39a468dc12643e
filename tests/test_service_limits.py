"""The service under overload and slow clients, and at start-up with a bad checkpoint (issue 12)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.test_service import (  # noqa: F401 (tiny_checkpoint: a fixture)
    REPO,
    free_port,
    subprocess_env,
    tiny_checkpoint,
)


@pytest.mark.parametrize("broken", ["config", "weights"])
def test_cli_exits_non_zero_naming_the_file_when_the_checkpoint_fails_to_load(
    tiny_checkpoint,  # noqa: F811
    tmp_path,
    broken,
):
    directory = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, directory)
    if broken == "config":
        config = json.loads((directory / "config.json").read_text())
        config["model"]["latent_dim"] = -1
        (directory / "config.json").write_text(json.dumps(config))
        bad_file = directory / "config.json"
    else:
        bad_file = directory / "model.safetensors"
        bad_file.write_bytes(b"not safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--checkpoint", str(directory)]
        + ["--port", str(free_port()), "--device", "cpu"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m service: error: ") and str(bad_file) in last, proc.stderr
    assert "Traceback" not in proc.stderr
