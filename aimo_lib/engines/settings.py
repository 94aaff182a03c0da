"""vLLM's engine arguments as run settings: one typed group, the same for the offline engine,
the async engine and the `vllm serve` command line (`VLLMSettings`).

    VLLMSettings(kv_cache_dtype="fp8_e4m3", max_model_len=65536).kwargs()
    VLLMSettings(max_num_seqs=64).cli_flags()       # ["--max-num-seqs", "64"]

A field left None is the engine's own default (on CPU: aimo_lib's, see VLLMEngine). Any other
EngineArgs field goes through `vllm_args`, checked against vLLM's own EngineArgs when vLLM is
importable. `kv_cache_dtype_for` adapts the one GPU setting a device may not run (fp8 KV
cache on a GPU without fp8, or on CPU) and says so; `read_back` reads what an engine runs with.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..fields import check_fields, setting

__all__ = ["FP8_MIN_CAPABILITY", "KV_CACHE_DTYPES", "VLLMSettings", "engine_arg_names",
           "engine_flags", "gpu_capability", "kv_cache_dtype_for", "read_back"]

# vLLM's CacheDType and ModelDType literals (vllm/config/cache.py, config/model.py), the ones
# a user of this project would pick.
KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# fp8 arithmetic (and so vLLM's fp8 KV cache kernels) needs compute capability 8.9 (Ada: L4)
# or above (Hopper: H100); a T4 (7.5) or an A100 (8.0) keeps the KV cache in the model's dtype.
FP8_MIN_CAPABILITY = (8, 9)


def _engine_args_problem(args: Mapping[str, Any]) -> str | None:
    typed = {f.name for f in dataclasses.fields(VLLMSettings)} - {"vllm_args"}
    for name in args:
        if not isinstance(name, str) or not name.isidentifier():
            return f"{name!r} is no engine argument name"
        if name in typed:
            return f"{name} is a setting of its own: set {name.upper()} instead"
    known = engine_arg_names() if args else None
    if known is None:  # none given, or no vLLM here: vLLM itself checks them where it runs
        return None
    for name in args:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            return f"vLLM's EngineArgs has no field {name!r}{hint}"
    return None


def engine_arg_names() -> frozenset[str] | None:
    """The fields of vLLM's EngineArgs, or None where vLLM is not installed."""
    global _NAMES
    if _NAMES is None and importlib.util.find_spec("vllm") is not None:
        from vllm.engine.arg_utils import EngineArgs

        _NAMES = frozenset(f.name for f in dataclasses.fields(EngineArgs))
    return _NAMES


_NAMES: frozenset[str] | None = None


@dataclass(frozen=True)
class VLLMSettings:
    """vLLM engine arguments given as run settings (None: the engine's default)."""

    max_model_len: int | None = setting(
        None, "vLLM: the context length (prompt and every generated token of a sample)",
        ge=16, le=1 << 22)
    gpu_memory_utilization: float | None = setting(
        None, "vLLM: the share of GPU memory it may use (on CPU: of RAM, for the KV cache; "
        "default 0.3 there)", gt=0.0, le=1.0)
    kv_cache_dtype: str | None = setting(
        None, "vLLM: the KV cache's dtype; fp8 (fp8_e4m3) halves it on GPUs that have fp8 "
        "(compute capability 8.9+); elsewhere auto is used, logged", choices=KV_CACHE_DTYPES)
    max_num_seqs: int | None = setting(
        None, "vLLM: the most sequences in one batch", ge=1, le=1 << 16)
    tensor_parallel_size: int | None = setting(
        None, "vLLM: GPUs to split the model over (default: every visible GPU)", ge=1, le=64)
    dtype: str | None = setting(
        None, "vLLM: the weights' dtype (auto: the checkpoint's; float16 on GPUs without bf16)",
        choices=DTYPES)
    quantization: str | None = setting(
        None, "vLLM: the quantization method (None: read from the checkpoint's config)")
    enforce_eager: bool | None = setting(
        None, "vLLM: no CUDA graphs / torch.compile (default: true on CPU, false on GPUs)")
    async_scheduling: bool | None = setting(
        None, "vLLM: schedule the next step while the current one runs")
    enable_prefix_caching: bool | None = setting(
        None, "vLLM: reuse the KV of shared prefixes (a sample's earlier turns; default true)")
    vllm_args: Mapping[str, Any] = setting(
        factory=dict, help="any other vLLM EngineArgs field, as a mapping (YAML) or JSON "
        "(AIMO_VLLM_ARGS='{\"swap_space\": 4}')", check=_engine_args_problem)

    def __post_init__(self) -> None:
        check_fields(self)

    def kwargs(self) -> dict[str, Any]:
        """EngineArgs keyword arguments: the fields given, then vllm_args."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "vllm_args" and getattr(self, f.name) is not None}
        return {**out, **self.vllm_args}

    def over(self, defaults: VLLMSettings) -> VLLMSettings:
        """These settings, with `defaults` where a field is not given."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "vllm_args" and getattr(self, f.name) is not None}
        return dataclasses.replace(defaults, **given,
                                   vllm_args={**defaults.vllm_args, **self.vllm_args})

    def cli_flags(self) -> list[str]:
        """The same settings as `vllm serve` flags."""
        return engine_flags(self.kwargs())


def engine_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """EngineArgs keyword arguments as `vllm serve` flags (--max-num-seqs 64, --no-x)."""
    flags = []
    for name, value in kwargs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (dict, list, tuple)):
            flags += [flag, json.dumps(value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def gpu_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability; None on a machine without one (or without torch)."""
    try:
        import torch

        return torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    except ImportError:
        return None


def kv_cache_dtype_for(kv: str | None, gpu_capability: tuple[int, int] | None
                       ) -> tuple[str | None, str | None]:
    """The KV cache dtype the device runs (gpu_capability None: a CPU), and a note when that
    is not the one asked for: fp8 needs a GPU with fp8 (compute capability 8.9+)."""
    if not (kv or "").startswith("fp8"):
        return kv, None
    if gpu_capability is None:
        return "auto", (f"kv_cache_dtype {kv} -> auto: vLLM-CPU keeps the KV cache in the "
                        "model's dtype")
    if tuple(gpu_capability) < FP8_MIN_CAPABILITY:
        major, minor = gpu_capability
        return "auto", (f"kv_cache_dtype {kv} -> auto: this GPU (compute capability "
                        f"{major}.{minor}) has no fp8; fp8 needs "
                        f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+ (L4, H100)")
    return kv, None


def read_back(vllm_config: Any) -> dict[str, Any]:
    """The settings an engine runs with, read from its VllmConfig."""
    model = getattr(vllm_config, "model_config", None)
    cache = getattr(vllm_config, "cache_config", None)
    sched = getattr(vllm_config, "scheduler_config", None)
    parallel = getattr(vllm_config, "parallel_config", None)
    pick = [("max_model_len", model, "max_model_len"),
            ("gpu_memory_utilization", cache, "gpu_memory_utilization"),
            ("kv_cache_dtype", cache, "cache_dtype"), ("max_num_seqs", sched, "max_num_seqs"),
            ("tensor_parallel_size", parallel, "tensor_parallel_size"),
            ("dtype", model, "dtype"), ("quantization", model, "quantization"),
            ("enforce_eager", model, "enforce_eager"),
            ("async_scheduling", sched, "async_scheduling"),
            ("enable_prefix_caching", cache, "enable_prefix_caching")]
    out = {}
    for name, part, attr in pick:
        value = getattr(part, attr, None)
        out[name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(
            value)
    return out
