#!/usr/bin/env bash
# `make demo`: the method working, through the whole service on this machine. It starts `diffii up` on
# the embedded defaults (SQLite, a SQLite broker, a local object folder), creates an API key, writes a
# world dataset of three bird species the world model never saw, submits it over the REST API with the
# CLI client on the `world` model, downloads and checks the archive, writes its preview sheet, and
# prints the oracle's faithfulness of the synthetic images beside the real images'. It stops everything
# it started, whatever happens (trap).
#
# The job is the world preset with fewer concept-learning steps (DEMO_CONCEPT_STEPS) and a small
# expansion, so it takes minutes on 2 cores; `tiny` (random weights) is for the tests, not the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
OUT_DIR="$PWD/demo-out"
ARCHIVE="$OUT_DIR/archive.zip"
CLASSES=3             # species, drawn by SEED from those the world model never saw
SHOTS=5               # real images per species
EXPANSION=2           # synthetic images per real image
CONCEPT_STEPS="${DEMO_CONCEPT_STEPS:-300}"  # the world preset learns 1000; see the faithfulness printed
SEED=0

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
  trap - EXIT
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
DATA="$DIFFII_HOME/birds"
"$BIN/diffii" world dataset "$DATA" --classes "$CLASSES" --shots "$SHOTS" --seed "$SEED" --test-per-class 5

mkdir -p "$OUT_DIR"
rm -f "$ARCHIVE"
BEGAN=$SECONDS
DIFFII_API_URL="$URL" DIFFII_API_KEY="$KEY" "$BIN/diffii" submit "$DATA/train" \
  --model world --metaclass bird --expansion "$EXPANSION" --concept-steps "$CONCEPT_STEPS" --seed "$SEED" \
  --wait --out "$ARCHIVE"
echo "demo: the job took $((SECONDS - BEGAN)) s from submission to the downloaded archive"
echo "demo: archive at $ARCHIVE"

"$BIN/python" -m scripts.demo_report "$ARCHIVE" "$DATA/train" "$OUT_DIR/sheet.png"
"$BIN/diffii" preview "$ARCHIVE" --out "$OUT_DIR/preview" >/dev/null
echo "demo: the archive's own preview sheets, one PNG per species, in $OUT_DIR/preview (and preview.html inside the archive)"
echo "demo: done in $SECONDS s"
