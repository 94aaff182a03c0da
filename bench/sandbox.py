"""Sandbox speed against the seed notebook's method, measured in the same run.

    python -m bench.sandbox            # full: ~1 minute on 2 cores
    python -m bench.sandbox --quick    # fewer repeats

Baseline ("subprocess"): what the winning AIMO-1 notebook did for every code block: write it
to a file with `import math / numpy as np / sympy as sp` prepended and run a fresh `python3`
on it (timeout 5 s). Ours: `aimo_lib.sandbox.Sandbox.run`, a fork of a warm, isolated worker.

Targets (issue #2): median latency >= 20x lower than the baseline; 192 executions
(48 samples x 4 rounds) in under 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from aimo_lib.sandbox import Sandbox

from ._baseline import subprocess_run
from ._machine import machine

# Short snippets of the kind a TIR model writes.
SNIPPETS = [
    "x = sp.Symbol('x')\nprint(sp.factor(x**4 - 5*x**2 + 4))",
    "x = sp.symbols('x')\nprint(sp.solve(x**2 - 5*x + 6, x))",
    "print(sum(k**2 for k in range(1, 101)) % 1000)",
    "print(sp.binomial(20, 10) % 1000)",
    "print(sp.Rational(3, 7) + sp.Rational(2, 9))",
    "print([p for p in range(2, 100) if sp.isprime(p)][-1])",
    "a = np.array([[2, 1], [1, 3]])\nprint(round(np.linalg.det(a)))",
    "x, y = sp.symbols('x y')\nprint(sp.solve([x + y - 10, x - y - 2], [x, y]))",
    "print(math.comb(30, 4) % 1000)",
    "n = sp.factorint(2**20 - 1)\nprint(n)",
]


def baseline_run(code: str) -> bool:
    return subprocess_run(code).ok


def latencies(fn, codes: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        for code in codes:
            start = time.perf_counter()
            assert fn(code), f"snippet failed: {code!r}"
            out.append(time.perf_counter() - start)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="sandbox workers")
    args = ap.parse_args()
    lat_repeats = 2 if args.quick else 5
    base_repeats = 1 if args.quick else 2
    batch = [SNIPPETS[i % len(SNIPPETS)] for i in range(192)]  # 48 samples x 4 rounds

    start = time.perf_counter()
    sb = Sandbox(workers=args.workers)
    startup = time.perf_counter() - start
    with sb:
        sb.run_many(SNIPPETS)  # first touch
        ours = latencies(lambda c: sb.run(c).ok, SNIPPETS, lat_repeats)
        t = time.perf_counter()
        results = sb.run_many(batch)
        ours_batch = time.perf_counter() - t
        assert all(r.ok for r in results)
        iso = sb.isolation.level

    base = latencies(baseline_run, SNIPPETS, base_repeats)
    t = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:  # same concurrency as the sandbox
        assert all(pool.map(baseline_run, batch))
    base_batch = time.perf_counter() - t

    print(f"machine: {machine()}; sandbox workers={args.workers}, isolation={iso}, "
          f"start-up {startup:.2f} s")
    print(f"{'measure':<34}{'subprocess (seed)':>18}{'sandbox':>12}{'ratio':>9}")
    rows = [
        ("median latency, short snippet (ms)", statistics.median(base) * 1e3,
         statistics.median(ours) * 1e3),
        ("p95 latency (ms)", pct(base, 0.95) * 1e3, pct(ours, 0.95) * 1e3),
        ("192 executions, run_many (s)", base_batch, ours_batch),
    ]
    for name, b, o in rows:
        print(f"{name:<34}{b:>18.1f}{o:>12.2f}{b / o:>8.1f}x")
    ok_lat = statistics.median(base) / statistics.median(ours) >= 20
    print(f"targets: median >= 20x lower: {'PASS' if ok_lat else 'FAIL'}; "
          f"192 in < 2 s: {'PASS' if ours_batch < 2 else 'FAIL'}")


if __name__ == "__main__":
    main()
