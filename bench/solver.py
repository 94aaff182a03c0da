"""Solver overhead per problem at N=48, M=4, with generation taken out of the picture.

    python bench/solver.py             # 3 problems each way, about 1.5 minutes on 2 cores
    python bench/solver.py --problems 1

A zero-latency ScriptedEngine plays 48 samples that each write a sympy block in every round
(3 executions per trace, the most M=4 allows) and then box an answer, so what is measured is
everything but the model: decoding rules, code execution, voting. Both runs use the
`numina_aimo1` preset; they differ only in the executor:

- ours: `aimo_lib.sandbox.Sandbox` (warm forked workers);
- seed: a fresh `python3` per block with the imports prepended, `os.cpu_count()` at a time
  (the original's `datasets.map(num_proc=os.cpu_count())`).

Targets (issue #3): at most 1 s of overhead per problem, and at least 20x less than the seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from _baseline import SubprocessExecutor  # noqa: E402

from aimo_lib import Solver, SolverConfig  # noqa: E402
from aimo_lib.engines import ScriptedEngine  # noqa: E402
from aimo_lib.sandbox import Sandbox  # noqa: E402

BLOCKS = [
    "x = sp.Symbol('x')\nprint(sp.factor(x**{k} - 1))",
    "print(sum(sp.divisors({k} * 12)))",
    "print(sp.binomial({k} + 10, 5) % 1000)",
]


def script(prompt: str, k: int) -> str:
    """Round r (r earlier outputs in the prompt) writes block r; after three, an answer."""
    r = prompt.count("```output\n")
    if r < 3:
        code = BLOCKS[r].format(k=k % 7 + 2)
        return f"Step {r}: compute.\n```python\n{code}\n```\n```output\n"
    return f"\nThe answer is \\boxed{{{(len(prompt) + k) % 5}}}."


def run(executor, problems: int) -> tuple[float, int]:
    cfg = SolverConfig.preset("numina_aimo1")
    solver = Solver(ScriptedEngine(script), executor, cfg)
    start, calls = time.perf_counter(), 0
    for i in range(problems):
        result = solver.solve(f"Problem {i}: what is the answer?")
        calls += sum(len(s.code_calls) for s in result.samples)
        assert all(s.status == "answered" for s in result.samples), "every trace must finish"
    return (time.perf_counter() - start) / problems, calls // problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", type=int, default=3, help="problems per executor")
    args = ap.parse_args()
    with Sandbox(workers=os.cpu_count()) as sb:
        run(sb, 1)  # warm-up
        ours, calls = run(sb, args.problems)
        level = sb.isolation.level
    seed, _ = run(SubprocessExecutor(), args.problems)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; N=48, M=4, {calls} executions per problem; "
          f"sandbox isolation={level}")
    print(f"{'executor':<40}{'s / problem':>12}{'ratio':>9}")
    print(f"{'seed: python3 subprocess per block':<40}{seed:>12.2f}{1:>8.1f}x")
    print(f"{'aimo_lib Sandbox (warm forks)':<40}{ours:>12.2f}{seed / ours:>8.1f}x")
    print(f"targets: <= 1 s per problem: {'PASS' if ours <= 1 else 'FAIL'}; "
          f">= 20x faster: {'PASS' if seed / ours >= 20 else 'FAIL'}")


if __name__ == "__main__":
    main()
