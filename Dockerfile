# The BN-CVAE response service. With `docker run --gpus all` it serves on the GPU, without on
# the CPU (--device auto). Build from the repository root:
#   docker build -t bncvae-service .
#   docker run --gpus all -p 8000:8000 bncvae-service
# `make docker-check` builds it on a local Debian base (no registry needed), runs and probes it
# (deploy/docker_check.py; docs/deployment.md).
#
# torch is the release the Makefile installs and every test runs on (TORCH_VERSION, checked by
# tests/test_service_docker.py), in its CUDA build from PyPI: torch 2.13.0's wheel is built for
# CUDA 13.0 and brings its own CUDA libraries (cuBLAS, cuDNN, ...) as pip packages. The default
# base is NVIDIA's CUDA 13.0 "base" image: the CUDA runtime and the settings the NVIDIA container
# toolkit reads for --gpus; its larger "runtime" image would hold a second copy of the libraries.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# --- build: pip and the package's sources; none of it reaches the image ----------------------
FROM ${BASE_IMAGE} AS build

ARG TORCH_VERSION=2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && python3 -m venv /opt/pip

# torch and what it requires, in a directory of its own: the image's one large layer.
RUN /opt/pip/bin/pip install --target /opt/torch "torch==${TORCH_VERSION}"
# Left out is what serving never loads: C++ headers and CMake files (for building extensions),
# static libraries, and what only torch.compile and torch.fx's symbolic shapes import (Triton,
# SymPy, mpmath, NetworkX) or building does (setuptools). The import at the end, and
# `make docker-check`'s requests, show that the service runs without them.
RUN cd /opt/torch \
    && rm -rf bin share torch/include torch/share triton triton-* sympy sympy-* isympy.py \
        mpmath mpmath-* networkx networkx-* setuptools setuptools-* _distutils_hack \
        distutils-precedence.pth \
    && find . -name '*.a' -delete \
    && find nvidia -depth -type d -name include -exec rm -rf {} + \
    && PYTHONPATH=/opt/torch python3 -c "import torch; print('torch', torch.__version__)"

# The package with its base dependencies only (what serving needs), torch excepted: it is above;
# less their test suites, type stubs and numpy's C headers.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY eval ./eval
COPY service ./service
RUN python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('torch')))" > /tmp/requirements.txt \
    && /opt/pip/bin/pip install --target /opt/app -r /tmp/requirements.txt \
    && /opt/pip/bin/pip install --target /opt/app --no-deps . \
    && cd /opt/app \
    && rm -rf bin numpy/_core/include numpy/_core/lib \
    && find . -depth -type d -name tests -exec rm -rf {} + \
    && find . -name '*.pyi' -delete \
    && PYTHONPATH=/opt/app:/opt/torch python3 -c "import service.app, service.engine"

# --- the image: the base, Python, and what the build stage installed ------------------------
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/app:/opt/torch

# Python alone: no pip, no venv (nothing is installed at run time); apt's lists and the
# documentation go.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && useradd --create-home --uid 10001 bncvae

COPY --from=build /opt/torch /opt/torch
COPY --from=build /opt/app /opt/app

WORKDIR /app
# The default checkpoint (model.checkpoint's directory format).
COPY checkpoints/bn-cvae-switchboard ./checkpoints/bn-cvae-switchboard
ENV BNCVAE_CHECKPOINT=/app/checkpoints/bn-cvae-switchboard

USER bncvae

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# SIGTERM (docker stop, Kubernetes) drains: admitted requests are answered, new ones get 503.
CMD ["python3", "-m", "service", "--host", "0.0.0.0", "--port", "8000", "--device", "auto"]
