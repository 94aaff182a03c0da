"""The CPU toy recipe, end to end in one command (under 30 minutes on 2 cores):

    python training/toy.py [--out runs/toy]

1. synthetic REPL-style problems (arithmetic a model this small cannot do in its head but
   can do with code), a training split and a held-out split;
2. TIR data from a programmatic teacher through the same data-generation path as a real one
   (generate_tir_data.generate: aimo_lib's solver, real sandboxed execution, answer check,
   re-sampling; the teacher writes a wrong program a quarter of the time);
3. stage-2 SFT of SmolLM2-135M (recipes/smollm2-135m/toy-tir.yaml);
4. `aimo eval`'s harness on the held-out problems for the base and the tuned model, served as
   the notebook serves them (vLLM where it is importable, CPU too; else transformers), and
   the gain in solve rate (maj@N) between them. Every step resumes if interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from dataclasses import replace

from common import load_recipe, prepare_model, write_json

from aimo_lib import Solver, SolverConfig
from aimo_lib.engines import ENGINE_KINDS, ScriptedEngine, build_engine
from aimo_lib.evaluation import EvalProblem, run_eval
from aimo_lib.sandbox import Sandbox

HERE = os.path.dirname(os.path.abspath(__file__))

TEMPLATES = [  # (problem, python expression), both formatted from the same numbers
    ("What is {a} * {b}?", "{a} * {b}"),
    ("What is {a} * {b} + {c}?", "{a} * {b} + {c}"),
    ("What is the sum of the integers from {a} to {b2}?", "sum(range({a}, {b2} + 1))"),
    ("What is the remainder when {a} ** 3 is divided by {c}?", "{a} ** 3 % {c}"),
    ("What is the greatest common divisor of {p} and {q}?", "math.gcd({p}, {q})"),
    ("How many positive divisors does {n} have?", "len(sp.divisors({n}))"),
]


def synthetic_problems(n: int, seed: int) -> list[EvalProblem]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        problem, expr = TEMPLATES[i % len(TEMPLATES)]
        v = dict(a=rng.randint(12, 99), b=rng.randint(12, 99), c=rng.randint(7, 97),
                 n=rng.randint(24, 960), p=rng.randint(2, 40) * 6, q=rng.randint(2, 40) * 4)
        v["b2"] = v["a"] + rng.randint(5, 60)
        code = expr.format(**v)
        import math

        import sympy as sp

        answer = int(eval(code, {"math": math, "sp": sp}))  # our own expression, not model code
        out.append(EvalProblem(f"toy-{seed}-{i}", problem.format(**v), answer))
    return out


def programmatic_teacher(wrong_rate: float = 0.25, seed: int = 0) -> ScriptedEngine:
    """Writes the ToRA-format solution of a synthetic problem: a program, then (after seeing
    its real output) a boxed answer. Sometimes it writes a wrong program, so answers are
    checked and re-sampled as for a real teacher."""
    by_text = {}
    for problem, expr in TEMPLATES:
        pattern = re.escape(problem).replace(r"\{", "{").replace(r"\}", "}")
        by_text[re.sub(r"\{(\w+)\}", r"(?P<\1>\\d+)", pattern)] = expr

    def fn(prompt: str, k: int) -> str:
        if "```output\n" in prompt:
            value = prompt.rsplit("```output\n", 1)[1].split("\n```")[0].strip()
            if prompt.endswith("\\boxed{"):  # the solver stopped at the answer's brace
                return f"{value}}}$."
            return f"\nThe answer is $\\boxed{{{value}}}$."
        problem = prompt.split("<|im_start|>user\n")[-1].split("\n\n")[0]
        for pattern, expr in by_text.items():
            m = re.match(pattern, problem)
            if m:
                code = expr.format(**m.groupdict())
                # Drawn from (seed, problem, attempt), not a shared stream: the data do not
                # depend on the order in which concurrent problems ask.
                if random.Random(f"{seed}:{problem}:{k}").random() < wrong_rate:
                    code += " + 1"
                return f"Let me compute it with Python.\n```python\nprint({code})\n```\n```output\n"
        return "I cannot solve this."

    return ScriptedEngine(fn)


def evaluate(model_dir: str, problems, out: str, args) -> float:
    cfg = SolverConfig.preset("default", num_samples=args.samples, max_rounds=3,
                              max_new_tokens=args.eval_tokens, temperature=0.7,
                              prompt_template="chat", competition="aimo3", early_stop=None)
    # The notebook's path: vLLM where it is importable (CPU too), else transformers.
    with build_engine(args.engine, model_dir) as engine, Sandbox() as sandbox:
        summary = run_eval(problems, lambda seed: Solver(engine, sandbox, replace(cfg, seed=seed)),
                           [0], out, {"dataset": "toy-heldout", "model": model_dir,
                                      "engine": type(engine).__name__,
                                      "solver": cfg.to_dict()}, "aimo3")
    return summary["maj_at_n"]["mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/toy")
    ap.add_argument("--train", type=int, default=120, help="training problems")
    ap.add_argument("--heldout", type=int, default=24, help="held-out problems")
    ap.add_argument("--samples", type=int, default=4, help="N at evaluation")
    ap.add_argument("--eval-tokens", type=int, default=96, help="tokens per step at evaluation")
    ap.add_argument("--engine", default="auto", choices=ENGINE_KINDS[:3],
                    help="evaluation engine (auto: vLLM where importable, else transformers)")
    ap.add_argument("--recipe", default=os.path.join(HERE, "recipes", "smollm2-135m",
                                                     "toy-tir.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    train = synthetic_problems(args.train, seed=1)
    seen = {p.problem for p in train}  # held-out problems never appear in training
    heldout = [p for p in synthetic_problems(4 * args.heldout, 2) if p.problem not in seen]
    heldout = heldout[: args.heldout]

    from generate_tir_data import generate

    data = os.path.join(args.out, "tir.jsonl")
    cfg = SolverConfig.preset("default", num_samples=1, early_stop=None, competition="aimo3",
                              prompt_template="chatml_tir")
    with Sandbox() as sandbox:
        counts = generate(train, programmatic_teacher(), sandbox, data, attempts=4, config=cfg)
    print(f"[toy] TIR data: {counts} -> {data}", flush=True)

    recipe = load_recipe(args.recipe, [f"dataset={data}",
                                       f"output_dir={os.path.join(args.out, 'sft')}", *args.set])
    from sft import train as sft_train

    t = time.time()
    report = sft_train(recipe)
    sft_s = time.time() - t
    print(f"[toy] SFT: {report['steps']} steps in {sft_s:.0f} s, loss {report['losses'][0]:.3f}"
          f" -> {report['losses'][-1]:.3f}", flush=True)

    base_dir = prepare_model(recipe["model_name_or_path"], recipe.get("gguf_file"))
    base = evaluate(base_dir, heldout, os.path.join(args.out, "eval-base"), args)
    tuned = evaluate(recipe["output_dir"], heldout, os.path.join(args.out, "eval-sft"), args)
    result = {"train_problems": len(train), "heldout_problems": len(heldout), "data": counts,
              "sft_steps": report["steps"], "sft_seconds": round(sft_s),
              "loss_first": report["losses"][0], "loss_last": report["losses"][-1],
              f"base_maj@{args.samples}": base, f"sft_maj@{args.samples}": tuned,
              "gain": tuned - base, "total_seconds": round(time.time() - start)}
    write_json(os.path.join(args.out, "toy_result.json"), result)
    print("[toy] " + json.dumps(result), flush=True)
    print(f"[toy] held-out solve rate: base {base:.1%} -> SFT {tuned:.1%} "
          f"(gain {tuned - base:+.1%}) in {result['total_seconds']} s total")


if __name__ == "__main__":
    main()
