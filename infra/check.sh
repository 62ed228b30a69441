#!/usr/bin/env bash
# Infra CI checks, runnable on a fresh Debian machine with no Docker engine and no cluster:
#   - docker-compose.yml (+ the CPU override) through Compose's own `config` (schema, interpolation),
#     plus the promises: services, start order, GPU reservation, CPU profile, no default passwords;
#   - the Dockerfiles through hadolint, non-root USER, HEALTHCHECK, exec-form CMD, build context;
#   - infra/k8s rendered by `kubectl kustomize` (base and production), validated against the
#     Kubernetes schemas (kubernetes-validate, strict) and the KEDA CRD schemas, plus the promises:
#     GPU request, grace period, probes, scale-to-zero on Postgres shard rows, Secret references;
#   - .env.example against the DIFFII_* settings classes.
# The checks live in tests/infra/test_infra.py (so `make test` runs the same ones); this script
# installs the tools (infra/install-tools.sh) and runs that file. Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

bash infra/install-tools.sh >/dev/null
tools="${DIFFII_INFRA_TOOLS:-$PWD/.venv/infra-tools}"

# The project venv can also check .env.example against the settings classes; without it (a machine
# where `make setup` has not run) the tools' own Python runs everything else and skips that check.
if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import pytest, yaml, pydantic_settings' 2>/dev/null; then
  exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/infra "$@"
fi
echo "project virtualenv not set up: settings checks will be skipped (run make setup for them)" >&2
exec "$tools/bin/python" -m pytest -q -p no:cacheprovider --noconftest tests/infra "$@"
