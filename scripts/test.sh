#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint and run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ruff check .
python -m pytest "$@"
