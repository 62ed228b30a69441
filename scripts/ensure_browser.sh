#!/usr/bin/env bash
# The browser the console's tests drive (tests/integration/test_console.py): Debian's Chromium,
# driven by Playwright's Python package (installed with the dev extras) through `executable_path`,
# so nothing is downloaded from outside the Debian and PyPI mirrors. Idempotent: with Chromium
# present it does nothing. Prints the browser's path on its last line.
set -euo pipefail

if ! command -v chromium >/dev/null; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "missing Debian package: chromium (run as root, or: sudo apt-get install chromium)" >&2
    exit 1
  fi
  echo "installing Debian packages: chromium fonts-dejavu-core" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
command -v chromium
