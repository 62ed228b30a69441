#!/usr/bin/env bash
# Remake docs/console-job.png and docs/console-new-job.png: the console's browser test takes them
# while it runs a real job on `diffii up` (tests/integration/test_console.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_browser.sh >/dev/null
DIFFII_CONSOLE_SCREENSHOTS="$PWD/docs" .venv/bin/python -m pytest -q \
  "tests/integration/test_console.py::test_sign_in_upload_submit_watch_preview_download_cancel_delete"
ls -l docs/console-job.png docs/console-new-job.png
