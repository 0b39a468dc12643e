"""The Dockerfile without a Docker engine: what it copies exists, what it runs parses; and, with
one, the image built, run and probed (``make docker-check``, deploy/docker_check.py).

The default checkpoint (checkpoints/bn-cvae-switchboard, shipped in the repository) is the one
copied path checked apart: ``test_default_checkpoint_is_shipped`` fails when it is incomplete or
unloadable, and when it is absent and BNCVAE_REQUIRE_CHECKPOINT is set (release CI), since
``docker build`` cannot succeed without it; in a checkout without it, the test skips.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import DEFAULT_CHECKPOINT, command_line

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
# The CUDA major version of torch's PyPI wheel for Linux x86_64, per release: pip's resolution
# of torch==2.13.0 on PyPI brings nvidia-cuda-runtime 13.0 (docs/deployment.md). Add a release
# here when TORCH_VERSION changes, and move the Dockerfile's base image with it.
TORCH_CUDA_MAJOR = {"2.13.0": "13"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def copy_sources() -> list[str]:
    """What the Dockerfile copies from the build context (not from its build stage)."""
    sources = []
    for keyword, args in instructions():
        if keyword in ("COPY", "ADD") and "--from=" not in args:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            assert len(parts) >= 2, args
            sources += parts[:-1]
    return sources


def is_default_checkpoint(source: str) -> bool:
    return Path(source) == DEFAULT_CHECKPOINT


def test_every_copied_path_exists():
    sources = copy_sources()
    assert {"pyproject.toml", "model", "service"} <= set(sources)
    assert any(is_default_checkpoint(s) for s in sources), "the image must carry the checkpoint"
    for source in sources:
        assert not Path(source).is_absolute() and ".." not in Path(source).parts, source
        if not is_default_checkpoint(source):  # see test_default_checkpoint_is_shipped
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_dockerignore_lets_every_copied_path_through():
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copy_sources():
        assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_the_package_install_covers_what_the_service_imports():
    """pip install . needs every package pyproject.toml lists (it finds them in the context)."""
    copied = {Path(s).parts[0] for s in copy_sources()}
    for package in ("model", "training", "eval", "service"):
        assert package in copied, f"{package}/ is not copied before pip install ."
    assert any(k == "RUN" and "--no-deps ." in a for k, a in instructions())


def test_cmd_runs_the_service_module_with_valid_arguments():
    cmds = [a for k, a in instructions() if k == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])  # exec form
    assert cmd[:3] == ["python3", "-m", "service"], cmd
    assert (REPO / "service" / "__main__.py").is_file()
    args = command_line(cmd[3:], {}).values
    assert (args["host"], args["port"], args["device"]) == ("0.0.0.0", 8000, "auto")


def base_image() -> str:
    """The default of the Dockerfile's BASE_IMAGE argument (which every stage is FROM)."""
    default = next(a for k, a in instructions() if k == "ARG" and a.startswith("BASE_IMAGE="))
    return default.partition("=")[2]


def test_image_basics():
    ins = instructions()
    keywords = [k for k, _ in ins]
    assert base_image().startswith("nvidia/cuda:") and "-base-" in base_image(), base_image()
    stages = [a for k, a in ins if k == "FROM"]
    assert stages == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"], stages
    assert ("EXPOSE", "8000") in ins
    user = [a for k, a in ins if k == "USER"]
    assert user and user[-1] not in ("root", "0"), "the service must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    healthcheck = next(a for k, a in ins if k == "HEALTHCHECK")
    assert "/health" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    env = " ".join(a for k, a in ins if k == "ENV")
    assert f"BNCVAE_CHECKPOINT=/app/{DEFAULT_CHECKPOINT.as_posix()}" in env


def test_default_checkpoint_is_shipped():
    directory = REPO / DEFAULT_CHECKPOINT
    if not directory.exists():
        if os.environ.get("BNCVAE_REQUIRE_CHECKPOINT"):
            pytest.fail(f"{DEFAULT_CHECKPOINT} is required (BNCVAE_REQUIRE_CHECKPOINT) but absent")
        pytest.skip(f"{DEFAULT_CHECKPOINT} is absent (docker build needs it)")
    from model.checkpoint import load_pretrained

    for name in ("config.json", "vocab.json", "model.safetensors"):
        assert (directory / name).is_file(), f"{DEFAULT_CHECKPOINT}/{name} is missing"
    model, _ = load_pretrained(directory)  # CheckpointError names a bad file
    assert model.config.variant == "bn-cvae"


def makefile_torch_version() -> str:
    for line in (REPO / "Makefile").read_text().splitlines():
        name, _, value = line.partition("?=")
        if name.strip() == "TORCH_VERSION":
            return value.strip()
    raise AssertionError("the Makefile sets no TORCH_VERSION")


def test_the_image_installs_the_torch_release_the_makefile_installs():
    version = makefile_torch_version()
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    assert args.get("TORCH_VERSION") == version, "Dockerfile and Makefile torch releases differ"
    runs = " ".join(a for k, a in instructions() if k == "RUN")
    assert 'pip install --target /opt/torch "torch==${TORCH_VERSION}"' in runs
    assert "torch==$(TORCH_VERSION)" in (REPO / "Makefile").read_text()
    # the base image's CUDA is the one the torch wheel was built for
    base = base_image()
    assert version in TORCH_CUDA_MAJOR, f"look up the CUDA version of torch {version}'s wheel"
    assert base.split(":")[1].split(".")[0] == TORCH_CUDA_MAJOR[version], base


@pytest.mark.slow
@pytest.mark.docker
def test_the_image_builds_runs_and_answers():
    """make docker-check: build on a local Debian base, run, probe, stop, clean up."""
    from deploy.docker_check import NO_ENGINE

    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "docker_check.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode == NO_ENGINE:
        pytest.skip(result.stderr.strip())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for check in (
        "/respond gave 3 responses",
        "n=3 choices",
        "counted the one /respond",
        "not root",
        "docker stop: exit code 0",
        "<= torch layer + 300 MB",
    ):
        assert check in output, check
    print(result.stdout)  # the figures, for pytest -s


def test_docker_check_removes_only_the_images_its_build_made():
    """Read from the build's log: not the base (FROM), not what came from the cache."""
    from deploy.docker_check import images_built

    log = """Step 1/4 : FROM bncvae-check-base:1
 ---> 48411358effd
Step 2/4 : ARG TORCH_VERSION=2.13.0
 ---> Using cache
 ---> bd43cddf7840
Step 3/4 : RUN apt-get update
 ---> Running in c22095dae836
Removing intermediate container c22095dae836
 ---> 8f812cd57409
Step 4/4 : FROM bncvae-check-base:1
 ---> 48411358effd
Step 5/5 : COPY --from=build /opt/torch /opt/torch
 ---> 669eff03bbf2
Successfully built 669eff03bbf2
"""
    assert images_built(log) == ["8f812cd57409", "669eff03bbf2"]
