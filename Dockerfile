# The BN-CVAE response service. With `docker run --gpus all` it serves on the GPU, without on
# the CPU (--device auto). Build from the repository root:
#   docker build -t bncvae-service .
#   docker run --gpus all -p 8000:8000 bncvae-service
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package (its torch requirement is met by the base image's CUDA build, which pip keeps).
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
