#!/usr/bin/env bash
# Speed and memory of concept learning, inversion and generation on a Stable-Diffusion-1.5-sized random
# pipeline (nothing downloaded). `scripts/gpu_check.sh --size tiny` runs the same path on a CPU in
# seconds; DIFFII_GPU_CHECK_SIZE sets the size too. Other flags: see `--help`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SIZE_ARGS=()
if [[ -n "${DIFFII_GPU_CHECK_SIZE:-}" ]]; then SIZE_ARGS=(--size "$DIFFII_GPU_CHECK_SIZE"); fi
exec "$PY" -m bench.gpu_check "${SIZE_ARGS[@]}" "$@"
