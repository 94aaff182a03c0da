#!/usr/bin/env bash
# Install the CPU environment into .venv, then execute kaggle_notebook.ipynb headless, exactly
# as Kaggle would, against aimo_lib's sample problems with the embedded SmolLM2 on CPU, and
# print the score. Extra arguments go to papermill (e.g. -p LIMIT 3 -p NUM_SAMPLES 4).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rm -rf runs/demo
mkdir -p runs/demo
python -m papermill kaggle_notebook.ipynb runs/demo/kaggle_notebook.executed.ipynb \
    -p PROBLEMS samples -p OUT_DIR runs/demo --log-output --progress-bar "$@"
echo
echo "=== runs/demo/report.txt ==="
cat runs/demo/report.txt
