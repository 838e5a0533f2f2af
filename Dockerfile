# segserve on a GPU: CUDA 13 runtime with cuDNN, onnxruntime-gpu (CUDA provider, IO binding, CUDA graphs)
# and nvImageCodec (JPEG decode on the GPU); falls back to the CPU when no GPU is present.
#   docker build -t segserve .
#   docker run --gpus all -p 50051:50051 -p 9100:9100 segserve
# No GPU at all? Dockerfile.cpu is a slim image on a Python base (no CUDA).
# TensorRT is not in this image (its libraries add several GB and no run here has proven them): `auto`
# takes CUDA > CPU and says so in the log. To add it, derive an image that installs tensorrt-cu13-libs
# matching onnxruntime-gpu's TensorRT and serve with --providers tensorrt --trt-cache-dir on a volume.
# onnxruntime-gpu >= 1.31 and nvidia-nvimgcodec-cu13 are built for CUDA 13 with cuDNN 9: keep the base in step.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/segserve \
    PATH=/opt/segserve/bin:$PATH \
    SEGSERVE_METRICS_PORT=9100

# Python, and the shared libraries OpenCV's headless wheel may link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# The shipped model is packaged with segserve; to serve your own, mount it and set SEGSERVE_MODEL
# (docker run -v $PWD/my-models:/models -e SEGSERVE_MODEL=/models/my.onnx ...).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python3 -m venv /opt/segserve \
    && /opt/segserve/bin/pip install --no-cache-dir ".[gpu]" \
    && /opt/segserve/bin/segserve --help > /dev/null

# The shipped model is baked in; mount another over /models (or set SEGSERVE_MODEL) to serve your own.
COPY service/segserve/models /models

RUN useradd --system --uid 10001 --home-dir /var/cache/segserve --create-home segserve
USER 10001
WORKDIR /var/cache/segserve

EXPOSE 50051 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["segserve", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["segserve", "serve", "--host", "0.0.0.0", "--port", "50051"]
