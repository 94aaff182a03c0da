#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint and run the tests.
#   bash scripts/test.sh          the full suite (CI's): real models and real vLLM included,
#                                 then the torch-free tests on Python 3.10, 3.12 and 3.13
#   bash scripts/test.sh --fast   the edit-test loop: no model loads, no vLLM (a few minutes)
# Other arguments go to pytest (e.g. `bash scripts/test.sh -k budget`) and skip the other
# Pythons.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ruff check .
if [ "${1:-}" = "--fast" ]; then
  shift
  python -m pytest -m "not slow and not vllm" -n auto --durations=5 "$@"
  exit
fi
python -m pytest --durations=15 "$@"
if [ $# -eq 0 ]; then
  bash scripts/test_pythons.sh 3.10 3.12 3.13
fi
