# The BN-CVAE response service. With `docker run --gpus all` it serves on the GPU, without on
# the CPU (--device auto). Build from the repository root:
#   docker build -t bncvae-service .
#   docker run --gpus all -p 8000:8000 bncvae-service
#
# torch is the release the Makefile installs and every test runs on (TORCH_VERSION, checked by
# tests/test_service_docker.py), in its CUDA build from PyPI: torch 2.13.0's wheel is built for
# CUDA 13.0 and brings its own CUDA libraries (cuBLAS, cuDNN, ...) as pip packages. The base is
# NVIDIA's CUDA 13.0 "base" image: the CUDA runtime and the settings the NVIDIA container toolkit
# reads for --gpus; its larger "runtime" image would hold a second copy of the libraries.
FROM nvidia/cuda:13.0.0-base-ubuntu24.04

ARG TORCH_VERSION=2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app

# torch first, pinned (its CUDA build: the default on PyPI for Linux x86_64).
RUN pip install "torch==${TORCH_VERSION}"

# The package with its base dependencies only: what serving needs.
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY eval ./eval
COPY service ./service
RUN pip install . && rm -rf build *.egg-info

# The default checkpoint (model.checkpoint's directory format).
COPY checkpoints/bn-cvae-switchboard ./checkpoints/bn-cvae-switchboard
ENV BNCVAE_CHECKPOINT=/app/checkpoints/bn-cvae-switchboard

RUN useradd --create-home --uid 10001 bncvae
USER bncvae

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000", "--device", "auto"]
