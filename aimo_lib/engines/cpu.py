"""vLLM-CPU configured for the machine it runs on, and what the machine is.

vLLM-CPU binds its worker's OpenMP threads to the physical cores of each NUMA node and keeps
one core of them for its engine-core process ("reserve_cpu_num=1"). On a 48-core server that
costs 2% of the compute; on the 2-core machines this project runs on (CI, laptops, Kaggle's
CPU sessions) it costs half, and torch then computes on one thread. `vllm_cpu_env` gives the
worker every core where the machine has few of them (bench/cpu.py measures the difference:
bench/README.md). A variable the user has set is never changed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

__all__ = ["FEW_CORES", "cpu_summary", "has_avx512", "vllm_cpu_env"]

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


def has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


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
