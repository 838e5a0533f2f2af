# segserve: CUDA runtime image with onnxruntime-gpu; falls back to the CPU when no GPU is present.
#   docker build -t segserve .
#   docker run --gpus all -p 50051:50051 -p 9100:9100 segserve
#   docker build --build-arg ORT_EXTRA=cpu -t segserve:cpu .    (a CPU-only image, no CUDA needed)
# onnxruntime-gpu 1.2x/1.3x wheels on PyPI are built for CUDA 12/13 with cuDNN 9: keep the base in step.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG ORT_EXTRA=gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/segserve \
    PATH=/opt/segserve/bin:$PATH \
    SEGSERVE_MODEL=/models/segserve-camvid.onnx \
    SEGSERVE_METRICS_PORT=9100 \
    SEGSERVE_TRT_CACHE_DIR=/var/cache/segserve/trt

# Python, and the shared libraries OpenCV's headless wheel links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python3 -m venv /opt/segserve \
    && /opt/segserve/bin/pip install --no-cache-dir ".[${ORT_EXTRA}]" \
    && /opt/segserve/bin/segserve --help > /dev/null

# The shipped model is baked in; mount another over /models (or set SEGSERVE_MODEL) to serve your own.
COPY service/segserve/models /models

RUN useradd --system --uid 10001 --home-dir /var/cache/segserve --create-home segserve \
    && mkdir -p /var/cache/segserve/trt && chown -R segserve /var/cache/segserve
USER 10001
WORKDIR /var/cache/segserve

EXPOSE 50051 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["segserve", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["segserve", "serve", "--host", "0.0.0.0", "--port", "50051"]
