#!/usr/bin/env bash
# The library's tests that need no torch, on the other supported Pythons (3.10: the AIMO 1
# image; 3.12; 3.13, where Kaggle's images are heading), each in its own venv (.venv-py3.X).
# Kaggle has run 3.10 and 3.11; the main environment (scripts/test.sh) is 3.11. Extra
# arguments name the versions instead: `... 3.12`. On 3.13 they take about 2.5 min on 2 cores
# at load 5 (4 min with the venv's first install).
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("${@:-3.10 3.12 3.13}")
# shellcheck disable=SC2206
versions=(${versions[*]})
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for v in "${versions[@]}"; do
  py=$(ls -d "$root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$py" ] || py=$(command -v "python$v" || true)
  if [ -z "$py" ] || ! "$py" -c "" 2>/dev/null; then
    echo "Python $v not found (pyenv install $v, or put python$v on PATH)" >&2
    exit 1
  fi
  echo "=== Python $v ($py)"
  [ -x ".venv-py$v/bin/python" ] || "$py" -m venv ".venv-py$v"
  ".venv-py$v/bin/python" -m pip install -q --disable-pip-version-check -e ".[test-core]"
  ".venv-py$v/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider \
      tests/test_answers.py tests/test_sandbox.py tests/test_solver.py tests/test_pipeline.py \
      tests/test_never_lose.py tests/test_chaos.py tests/test_kaggle.py tests/test_evaluation.py \
      tests/test_engines.py tests/test_hostile.py tests/test_harmony.py tests/test_resolve.py \
      tests/test_page_cache.py
done
