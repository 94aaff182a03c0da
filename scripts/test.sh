#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint and run the test suite; with no
# arguments, also the library's torch-free tests on Python 3.10, 3.12 and 3.13 (their own venvs).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`) and skip those.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ruff check .
python -m pytest --durations=15 "$@"
if [ $# -eq 0 ]; then
  bash scripts/test_pythons.sh 3.10 3.12 3.13
fi
