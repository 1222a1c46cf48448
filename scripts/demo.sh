#!/usr/bin/env bash
# Set everything up, then run the edgefleet demo (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/edgefleet demo "$@"
