#!/usr/bin/env bash
# The main job: set up (idempotent), then run the daily pipeline end to end on the
# embedded defaults (local Spark, Delta on disk, Airflow with SQLite) for the demo days.
# Extra arguments go to `keep run`, e.g. `./scripts/demo.sh --start 2026-01-01 --end 2026-01-05`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/keep run --via airflow "$@"
