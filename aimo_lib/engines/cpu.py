"""vLLM-CPU configured for the machine it runs on, and what the machine is.

vLLM-CPU binds its worker's OpenMP threads to the physical cores of each NUMA node and keeps
one core of them for its engine-core process ("reserve_cpu_num=1"). On a 48-core server that
costs 2% of the compute; on the 2-core machines this project runs on (CI, laptops, Kaggle's
CPU sessions) it costs half, and torch then computes on one thread. `vllm_cpu_env` gives the
worker every core where the machine has few of them, and `cpu_dtype` picks float32 where the
CPU has no bf16 arithmetic (bench/cpu.py measures both: bench/README.md). A setting the user
has made is never changed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

__all__ = ["CPU_KV_CACHE_BYTES", "FEW_CORES", "cpu_dtype", "cpu_kv_cache_bytes", "cpu_summary",
           "has_avx512", "vllm_cpu_env"]

# The KV cache of a CPU engine whose size nobody gave (vLLM's own CPU default was 4 GiB): the
# embedded SmolLM2 in float32 keeps 45k tokens in it, and allocating 30% of a 24 GiB machine
# instead cost about 8 s of every load (bench/cpu.py: ours_kv1g).
CPU_KV_CACHE_BYTES = 2 << 30

# At most this many usable cores, vLLM-CPU's reserved core is a large share of the machine:
# the worker gets them all.
FEW_CORES = 4


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def vllm_cpu_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The VLLM_CPU_* variables to add for a vLLM-CPU engine started now: on a machine with
    at most FEW_CORES usable cores, every one of them for the worker's threads and none
    reserved. Variables already in `environ` (default os.environ) are left out."""
    environ = os.environ if environ is None else environ
    cores = usable_cores()
    if len(cores) > FEW_CORES:
        return {}
    wanted = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
              "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {k: v for k, v in wanted.items() if k not in environ}


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_kv_cache_bytes(gpu_memory_utilization: float | None, given: dict,
                       environ: Mapping[str, str] | None = None) -> int | None:
    """CPU_KV_CACHE_BYTES, unless the KV cache's size is given some other way (the share of
    RAM, kv_cache_memory_bytes, or VLLM_CPU_KVCACHE_SPACE): then None."""
    environ = os.environ if environ is None else environ
    if (gpu_memory_utilization is not None or given.get("kv_cache_memory_bytes") is not None
            or "VLLM_CPU_KVCACHE_SPACE" in environ):
        return None
    return CPU_KV_CACHE_BYTES


def has_avx512() -> bool:
    return "avx512f" in _flags()


def cpu_dtype() -> str:
    """The dtype vLLM-CPU computes fastest in here: bfloat16 where the CPU has bf16 arithmetic
    (AVX512-BF16 or AMX), else float32: on an AVX2 machine bf16 weights ran the embedded model
    at a third of float32's batch throughput (bench/cpu.py, bench/README.md)."""
    return "bfloat16" if _flags() & {"avx512_bf16", "amx_bf16"} else "float32"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> str:
    """One line naming the CPU, as every figure must: model, usable cores, AVX-512."""
    return (f"{cpu_model()}, {len(usable_cores())} cores, "
            f"AVX-512 {'yes' if has_avx512() else 'no'}")
