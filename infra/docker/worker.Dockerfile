# syntax=docker/dockerfile:1.7
# diffii GPU worker image: Celery worker with the CUDA build of torch. Models are NOT baked in: they
# are fetched on first use into DIFFII_MODEL_CACHE_DIR / HF_HOME, which compose and Kubernetes mount
# as a volume so a restarted or newly scaled worker does not download gigabytes again.
# Build from the repo root:  docker build -f infra/docker/worker.Dockerfile -t diffii-worker .

# Runtime flavour (no nvcc): torch's CUDA wheels bring their own CUDA/cuDNN libraries; the base only
# has to provide the user-space pieces the NVIDIA container toolkit expects. Ubuntu 24.04 is the
# first CUDA base whose distro Python (3.12) satisfies requires-python >= 3.11.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# Must match the CUDA major.minor of the base image (cu128 <-> 12.8) and the host driver's support.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Distro packages are not version-pinned: Ubuntu drops superseded versions from its archive, so an
# exact pin breaks rebuilds after every security update; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY diffii_core ./diffii_core
COPY services ./services
COPY migrations ./migrations
RUN pip install . && pip check

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Same reason as above for not pinning; python3 must match the interpreter the venv was built with.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIFFII_HOME=/var/lib/diffii \
    DIFFII_MODEL_CACHE_DIR=/models \
    HF_HOME=/models/huggingface \
    DIFFII_CONCURRENCY=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The CUDA base ships an `ubuntu` user at uid 1000; use the same fixed uid as the API image instead
# so one volume-ownership rule (10001) covers both.
RUN groupadd --system --gid 10001 diffii \
    && useradd --system --uid 10001 --gid diffii --home-dir /home/diffii --create-home diffii \
    && mkdir -p /var/lib/diffii /models \
    && chown diffii:diffii /var/lib/diffii /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# The declared volume keeps downloaded weights out of the container layer even when the operator
# forgets to mount one.
VOLUME ["/models"]
# Broadcast a Celery ping through the broker and look for this container's node in the replies. It
# needs no import of the worker's Celery app (only the broker URL), and with the prefork pool the
# parent process answers pings while the child is busy with a long shard.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=5 \
    CMD ["sh", "-c", "celery --broker \"$DIFFII_BROKER_URL\" inspect ping --timeout 20 2>/dev/null | grep -q \"@$(hostname): OK\""]
# Exec form so `diffii worker` is PID 1 and receives SIGTERM itself: Celery's warm shutdown then
# finishes the current shard instead of a shell swallowing the signal.
STOPSIGNAL SIGTERM
CMD ["diffii", "worker"]
