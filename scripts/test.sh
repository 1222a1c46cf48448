#!/usr/bin/env bash
# Set everything up, then run lint, types and the whole test suite. Fails loudly:
# a missing component is an error, never a skip; "no tests ran" is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check agent fleet_server federated tools tests benchmarks
echo "== mypy"
.venv/bin/mypy agent fleet_server federated tools
echo "== pytest"
set +e
.venv/bin/python -m pytest -n "${EDGEFLEET_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
