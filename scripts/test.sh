#!/usr/bin/env bash
# Set up (idempotent), then lint, type-check and run the whole test suite.
# Extra arguments go to pytest, e.g. `./scripts/test.sh -m "not slow"` for the quick subset.
#
# mypy (one process, ~40 s from a cold cache) type-checks while pytest runs, so its time is
# not added to the suite's; its report follows pytest's, and either failing fails the command.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== import rules"; .venv/bin/lint-imports
mypy_log=$(mktemp)
.venv/bin/mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
trap 'kill "$mypy_pid" 2>/dev/null || true; rm -f "$mypy_log"' EXIT
echo "== pytest (mypy runs beside it)"
pytest_rc=0; .venv/bin/pytest "$@" || pytest_rc=$?
mypy_rc=0; wait "$mypy_pid" || mypy_rc=$?
echo "== mypy"; cat "$mypy_log"
if [ "$pytest_rc" -ne 0 ] || [ "$mypy_rc" -ne 0 ]; then
  echo "test.sh: failed (pytest exit $pytest_rc, mypy exit $mypy_rc)" >&2
  exit $(( pytest_rc != 0 ? pytest_rc : mypy_rc ))
fi
