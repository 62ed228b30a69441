# syntax=docker/dockerfile:1.7
# diffii API image: FastAPI on CPU. Also runs the one-shot `init` step (migrate + bucket) and, in the
# CPU compose profile, the worker with the built-in `tiny` model; so it carries the whole package.
# Build from the repo root:  docker build -f infra/docker/api.Dockerfile -t diffii-api .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# CPU wheel index: the default PyPI torch wheel pulls several GB of CUDA libraries the API never uses.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index; `pip install .` then finds torch==2.13.0 satisfied (+cpu is a
# local version label) and takes everything else from PyPI at the versions pyproject.toml pins.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY diffii_core ./diffii_core
COPY services ./services
COPY migrations ./migrations
RUN pip install . && pip check

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIFFII_HOME=/var/lib/diffii \
    DIFFII_MODEL_CACHE_DIR=/models \
    HF_HOME=/models/huggingface
# A fixed numeric uid so Kubernetes `runAsNonRoot` can verify it and volume ownership is predictable.
RUN groupadd --system --gid 10001 diffii \
    && useradd --system --uid 10001 --gid diffii --home-dir /home/diffii --create-home diffii \
    && mkdir -p /var/lib/diffii /models \
    && chown diffii:diffii /var/lib/diffii /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Liveness only (no database/broker round trip): /readyz is for traffic routing, not restarts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["diffii", "serve", "--host", "0.0.0.0", "--port", "8000"]
