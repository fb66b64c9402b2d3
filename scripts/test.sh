#!/usr/bin/env bash
# Set up (idempotent), then lint, type-check and run the whole test suite.
# Extra arguments go to pytest, e.g. `./scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== import rules"; .venv/bin/lint-imports
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest "$@"
