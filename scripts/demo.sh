#!/usr/bin/env bash
# The main job: set up (idempotent), then run the daily pipeline end to end on the
# embedded defaults (local Spark, Delta on disk, Airflow with SQLite) for the demo days,
# then serve the live downstream model and score one request over HTTP.
# Extra arguments go to `keep run`, e.g. `./scripts/demo.sh --start 2026-01-01 --end 2026-01-05`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The demo's days are synthetic: turn demo mode on explicitly (off by default, so that a
# real deployment never writes generated files into its landing zone). The DAG's land_raw
# task then writes each day's raw files with the generator (refused if the day's raw
# folders hold files the generator did not write).
export KEEP_AIRFLOW__DEMO_MODE=true
.venv/bin/keep run --via airflow "$@"

# The online half: serve the live ads model (knowledge from Feast, pinned to its lineage),
# score one user's candidates over HTTP, show the health and a few metrics, stop.
PORT="${KEEP_SERVE__PORT:-8087}"
mkdir -p var/serve
.venv/bin/keep serve --port "$PORT" > var/serve/demo.log 2>&1 &
SERVE_PID=$!
trap 'kill "$SERVE_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || { echo "keep serve exited: see var/serve/demo.log"; exit 1; }
  sleep 0.5
done
echo "keep serve on http://127.0.0.1:$PORT"
echo "GET /healthz: $(curl -s "http://127.0.0.1:$PORT/healthz")"
echo "POST /v1/score {\"user_id\": 1, \"item_ids\": [1, 2, 3, 4, 5]}:"
curl -s "http://127.0.0.1:$PORT/v1/score" -H 'content-type: application/json' \
  -d '{"user_id": 1, "item_ids": [1, 2, 3, 4, 5]}'
echo
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^keep_serve_(requests_total|model_version|missing_keys_total)'
kill "$SERVE_PID"
wait "$SERVE_PID" 2>/dev/null || true
