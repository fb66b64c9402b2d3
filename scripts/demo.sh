#!/usr/bin/env bash
# The main job: set up (idempotent), then run the daily pipeline end to end on the
# embedded defaults (local Spark, Delta on disk, Airflow with SQLite) for the demo days.
# Extra arguments go to `keep run`, e.g. `./scripts/demo.sh --start 2026-01-01 --end 2026-01-05`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The demo's days are synthetic: turn demo mode on explicitly (off by default, so that a
# real deployment never writes generated files into its landing zone). The DAG's land_raw
# task then writes each day's raw files with the generator (refused if the day's raw
# folders hold files the generator did not write).
export KEEP_AIRFLOW__DEMO_MODE=true
exec .venv/bin/keep run --via airflow "$@"
