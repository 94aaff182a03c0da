"""The AIMO-1 winning notebook's way to run a code block, used as the baseline by the benches:
write it to a file with the three imports prepended and run a fresh `python3` on it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from aimo_lib.sandbox import ExecutionResult

PRELUDE = "import math\nimport numpy as np\nimport sympy as sp\n"


def subprocess_run(code: str, timeout_s: float = 5.0) -> ExecutionResult:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tmp.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(PRELUDE + code)
        try:
            proc = subprocess.run([sys.executable, path], capture_output=True, text=True,
                                  timeout=timeout_s)
            status = "ok" if proc.returncode == 0 else "error"
            output = proc.stdout if status == "ok" else proc.stderr
        except subprocess.TimeoutExpired:
            status, output = "timeout", ""
    return ExecutionResult(status, output, time.perf_counter() - start)


class SubprocessExecutor:
    """Sandbox-shaped (run_many) executor that runs each block the seed's way. `workers`
    blocks run at once, as the seed's `datasets.map(num_proc=os.cpu_count())` did."""

    def __init__(self, workers: int | None = None):
        self.pool = ThreadPoolExecutor(workers or os.cpu_count())

    def run_many(self, codes, timeout_s=5.0, display=True, **_) -> list[ExecutionResult]:
        """Sandbox.run_many's signature; its deadline and stderr options are not modelled."""
        return list(self.pool.map(lambda c: subprocess_run(c, timeout_s), codes))
