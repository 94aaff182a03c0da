#!/usr/bin/env bash
# Install the CPU environment into .venv, then solve a few easy problems with the embedded
# SmolLM2-135M model on CPU, with real sandboxed code execution.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
python - <<'PY'
from aimo_lib import Solver, SolverConfig
from aimo_lib.engines import HFEngine
from aimo_lib.sandbox import Sandbox

problems = [("What is 17 * 23?", 391), ("How many positive divisors does 36 have?", 9),
            ("What is the remainder when 2^10 is divided by 7?", 2)]
cfg = SolverConfig.preset("default", num_samples=8, max_rounds=3, max_new_tokens=160,
                          prompt_template="chatml_tir_1shot", temperature=0.7)
with Sandbox() as sandbox:
    solver = Solver(HFEngine(), sandbox, cfg)
    score = 0
    for problem, truth in problems:
        r = solver.solve(problem)
        score += r.answer == truth
        calls = sum(len(s.code_calls) for s in r.samples)
        print(f"{problem}\n  answer {r.answer} (truth {truth}) votes {r.votes} "
              f"code calls {calls} time {r.elapsed_s:.1f} s")
    print(f"score: {score}/{len(problems)}")
PY
