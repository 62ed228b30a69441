#!/usr/bin/env bash
# `make demo`: run the whole service on this machine (`diffii up` on the embedded defaults: SQLite,
# a SQLite broker, a local object folder), create an API key, push the sample dataset through the
# REST API with the CLI client, download and check the archive, and stop everything it started,
# whatever happens (trap).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
OUT_DIR="$PWD/demo-out"
ARCHIVE="$OUT_DIR/archive.zip"

# Embedded defaults only: a developer's DIFFII_* settings must not point the demo elsewhere.
for var in $(env | grep -o '^DIFFII_[A-Z0-9_]*' || true); do unset "$var"; done
export DIFFII_HOME
DIFFII_HOME="$(mktemp -d -t diffii-demo-XXXXXX)"
PORT="${DEMO_PORT:-$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
URL="http://127.0.0.1:$PORT"
UP_LOG="$DIFFII_HOME/up.log"
UP_PID=""

cleanup() {
  status=$?
  if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
    echo "demo: stopping diffii up"
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
  fi
  if [[ $status -ne 0 ]]; then
    echo "demo: FAILED (exit $status); last lines of the service log ($UP_LOG):" >&2
    tail -n 40 "$UP_LOG" >&2 || true
  else
    rm -rf "$DIFFII_HOME"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "demo: starting diffii up on $URL (state in $DIFFII_HOME)"
"$BIN/diffii" up --port "$PORT" >"$UP_LOG" 2>&1 &
UP_PID=$!

for _ in $(seq 1 180); do
  if curl -sf "$URL/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$UP_PID" 2>/dev/null; then echo "demo: diffii up exited early" >&2; exit 1; fi
  sleep 0.5
done
curl -sf "$URL/readyz" >/dev/null || { echo "demo: the service did not become ready" >&2; exit 1; }
echo "demo: service ready"

KEY="$("$BIN/diffii" admin create-key --owner demo 2>/dev/null)"
"$BIN/python" -c "from diffii_core.sample_data import write_sample_dataset; write_sample_dataset('$DIFFII_HOME/sample')"
echo "demo: sample dataset written to $DIFFII_HOME/sample"

mkdir -p "$OUT_DIR"
rm -f "$ARCHIVE"
DIFFII_API_URL="$URL" DIFFII_API_KEY="$KEY" "$BIN/diffii" submit "$DIFFII_HOME/sample" \
  --model tiny --concept-steps 30 --expansion 2 --seed 0 --wait --out "$ARCHIVE"

"$BIN/python" - "$ARCHIVE" <<'PY'
import json
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as zf:
    names = zf.namelist()
    images = [n for n in names if n.endswith(".png")]
    lines = [json.loads(line) for line in zf.read("metadata.jsonl").decode("utf-8").splitlines()]
    job = json.loads(zf.read("job.json"))
assert images and len(images) == len(set(images)), "archive holds no or duplicated images"
assert sorted(line["file_name"] for line in lines) == sorted(images), "metadata does not match the images"
per_class = {}
for line in lines:
    per_class[line["label"]] = per_class.get(line["label"], 0) + 1
print(f"demo: archive checked: {len(images)} images, {len(lines)} metadata lines, model {job['model']['name']}")
for name, count in sorted(per_class.items()):
    print(f"demo:   {name}: {count} images")
PY
echo "demo: archive at $ARCHIVE"
"$BIN/diffii" preview "$ARCHIVE" --out "$OUT_DIR/preview" >/dev/null
echo "demo: preview sheets (real beside synthetic, one PNG per class) in $OUT_DIR/preview; all of them in preview.html inside the archive"
