#!/usr/bin/env bash
# The browser the console's tests drive (tests/integration/test_console.py): Debian's Chromium,
# driven by Playwright's Python package (a dev extra) through `executable_path`, so nothing comes
# from outside the Debian and PyPI mirrors. The fonts cover the sample dataset's class names
# (Latin and CJK) in the screenshots. Idempotent: with everything present it installs nothing.
# Prints the browser's path on its last line.
set -euo pipefail

packages=(chromium fonts-dejavu-core fonts-droid-fallback)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ "$(id -u)" != 0 ]]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them with apt-get)" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v chromium
