"""The whole training chain at toy size on CPU, in one command:

    python -m training.toy [--out runs/toy] [--seeds 2]

1. synthetic REPL-style problems (arithmetic a 135M model cannot do in its head but can do
   with code) from SEEN templates for training; held out: new numbers of the seen templates,
   and templates never seen in training (UNSEEN);
2. stage 1, CoT SFT of SmolLM2-135M on worked solutions in words (recipes/smollm2-135m/
   toy-cot.yaml);
3. stage 2, TIR SFT of the stage-1 model (toy-tir.yaml) on TIR data from a programmatic teacher
   through the real data-generation path (generate_tir_data.generate: aimo_lib's solver, real
   sandboxed execution, answer check, re-sampling; the teacher writes a wrong program a quarter
   of the time), in NuminaMath-TIR's format (the bare problem as the user turn);
4. on-policy KTO of the stage-2 model (toy-kto.yaml): its own samples on new seen-template
   problems, labelled by correctness (kto.sample_completions, kto.train);
5. 8-bit GPTQ of the KTO model (toy-gptq.yaml, quantize.py);
6. after each stage, the model served as the notebook serves it (aimo_lib's RunConfig and
   EngineSpec: vLLM where importable, CPU too, else transformers; a trained checkpoint in its
   own chat template, the base model with its best prompt, the one-shot CPU default) and
   evaluated with `aimo eval`'s harness on both held-out sets over `--seeds` seeds.

Every step resumes if interrupted (a finished stage is skipped); figures go to
<out>/toy_result.json and bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time

import sympy as sp

from aimo_lib import SolverConfig
from aimo_lib.config import RunConfig
from aimo_lib.engines import ENGINE_KINDS, ScriptedEngine
from aimo_lib.evaluation import EvalProblem, eval_runner, run_eval
from aimo_lib.resolve import machine_probe, resolve
from aimo_lib.sandbox import Sandbox

from .common import module_env, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPES = os.path.join(HERE, "recipes", "smollm2-135m")

SEEN = [  # (problem, python expression), both formatted from the same numbers
    ("What is {a} * {b}?", "{a} * {b}"),
    ("What is {a} * {b} + {c}?", "{a} * {b} + {c}"),
    ("What is the sum of the integers from {a} to {b2}?", "sum(range({a}, {b2} + 1))"),
    ("What is the remainder when {a} ** 3 is divided by {c}?", "{a} ** 3 % {c}"),
    ("What is the greatest common divisor of {p} and {q}?", "math.gcd({p}, {q})"),
    ("How many positive divisors does {n} have?", "len(sp.divisors({n}))"),
]
UNSEEN = [  # never in any training data: does the skill carry over to new wordings?
    ("What is the least common multiple of {p} and {q}?", "math.lcm({p}, {q})"),
    ("What is {a} squared minus {c}?", "{a} ** 2 - {c}"),
]
TEMPLATES = SEEN + UNSEEN


def instances(n: int, seed: int, templates=SEEN) -> list[tuple[EvalProblem, str]]:
    """n problems (round-robin over `templates`) with the expression that solves each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        problem, expr = templates[i % len(templates)]
        v = dict(a=rng.randint(12, 99), b=rng.randint(12, 99), c=rng.randint(7, 97),
                 n=rng.randint(24, 960), p=rng.randint(2, 40) * 6, q=rng.randint(2, 40) * 4)
        v["b2"] = v["a"] + rng.randint(5, 60)
        code = expr.format(**v)
        answer = int(eval(code, {"math": math, "sp": sp}))  # our own expression, not model code
        out.append((EvalProblem(f"toy-{seed}-{i}", problem.format(**v), answer), code))
    return out


def synthetic_problems(n: int, seed: int, templates=SEEN) -> list[EvalProblem]:
    return [p for p, _ in instances(n, seed, templates)]


def cot_row(p: EvalProblem, code: str) -> dict:
    """Stage-1 data: a worked solution in words, no code (a CoT teacher's)."""
    return {"id": p.id, "messages": [
        {"role": "user", "content": p.problem},
        {"role": "assistant", "content": f"We need to evaluate {code}. Working it out step by "
                                         f"step gives {p.answer}.\nThe answer is "
                                         f"$\\boxed{{{p.answer}}}$."}]}


def _programs() -> list[tuple[re.Pattern, str]]:
    """(problem pattern, expression) for every template: how a teacher reads a problem."""
    out = []
    for problem, expr in TEMPLATES:
        pattern = re.escape(problem).replace(r"\{", "{").replace(r"\}", "}")
        out.append((re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>\\d+)", pattern)), expr))
    return out


def _program(programs, problem: str, wrong_rate: float, seed: int, k: int) -> str | None:
    """The program that solves `problem` (None: no template matches); wrong (off by one) for
    a `wrong_rate` share of attempts, drawn from (seed, problem, k), not a shared stream. k
    counts the times this prompt text was sent, so the data depend on the order of concurrent
    problems only where two problems have the same text."""
    for pattern, expr in programs:
        m = pattern.match(problem)
        if m:
            code = expr.format(**m.groupdict())
            if random.Random(f"{seed}:{problem}:{k}").random() < wrong_rate:
                code += " + 1"
            return code
    return None


def programmatic_teacher(wrong_rate: float = 0.25, seed: int = 0) -> ScriptedEngine:
    """Writes the ToRA-format solution of a synthetic problem: a program, then (after seeing
    its real output) a boxed answer. Sometimes it writes a wrong program, so answers are
    checked and re-sampled as for a real teacher."""
    programs = _programs()

    def fn(prompt: str, k: int) -> str:
        if "```output\n" in prompt:
            value = prompt.rsplit("```output\n", 1)[1].split("\n```")[0].strip()
            if prompt.endswith("\\boxed{"):  # the solver stopped at the answer's brace
                return f"{value}}}$."
            return f"\nThe answer is $\\boxed{{{value}}}$."
        problem = prompt.split("<|im_start|>user\n")[-1].split("\n\n")[0]
        code = _program(programs, problem, wrong_rate, seed, k)
        if code is None:
            return "I cannot solve this."
        return f"Let me compute it with Python.\n```python\nprint({code})\n```\n```output\n"

    return ScriptedEngine(fn)


_THOUGHTS = ["Compute it with python.", "Let me check this with python before answering.",
             "I will write a short program.", "Python can do this exactly.",
             "The numbers are too large to do in my head, so I will run code.",
             "Use the tool.", "This is a direct computation; a program gives it."]


def _thought(key: str) -> str:
    """The analysis before the tool call: one to three sentences, drawn from `key`. Its length
    varies, so the distance from the problem to the code does too: a model cannot copy the
    problem's numbers by their position and has to find them by what precedes them."""
    rng = random.Random(key)
    return " ".join(rng.sample(_THOUGHTS, rng.randint(1, 3)))


def harmony_teacher(wrong_rate: float = 0.25, seed: int = 0) -> ScriptedEngine:
    """The same teacher in gpt-oss's harmony format, its messages rendered by openai_harmony
    (the library that defines the format): a thought on the analysis channel, a call to the
    python tool, and after the tool's real reply a final message with the boxed answer."""
    import openai_harmony as oh

    enc = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    programs = _programs()
    assistant = lambda text, channel: oh.Message.from_role_and_content(  # noqa: E731
        oh.Role.ASSISTANT, text).with_channel(channel)

    def render(*messages) -> str:
        # the first message's "<|start|>assistant" is the prompt's (or the tool reply's) end
        text = "".join(enc.decode(enc.render(m)) for m in messages)
        return text.removeprefix("<|start|>assistant")

    def final(text: str) -> str:  # the model's last message ends the sample: <|return|>
        return render(assistant(text, "final")).removesuffix("<|end|>") + "<|return|>"

    def fn(prompt: str, k: int) -> str:
        if "<|start|>python to=assistant" in prompt:
            value = prompt.rsplit("<|message|>", 1)[1].split("<|end|>")[0].strip()
            return final(f"\\boxed{{{value}}}")
        problem = prompt.split("<|start|>user<|message|>")[-1].split("\n")[0].split("<|end|>")[0]
        code = _program(programs, problem, wrong_rate, seed, k)
        if code is None:
            return final("I cannot solve this.")
        call = (assistant(f"print({code})", "analysis").with_recipient("python")
                .with_content_type("code"))
        # The thought shares _program's key, and wrong attempts are rejected: a kept thought is
        # a single sentence one time in nine, not three. Its own key was measured and changed
        # no more than a rebuild does (bench/README.md), so the data stay as built.
        return render(assistant(_thought(f"{seed}:{problem}:{k}"), "analysis"), call)

    return ScriptedEngine(fn)


# ---------------------------------------------------------------- stages


def _argv(recipe: str, **overrides) -> list[str]:
    """A recipe of recipes/smollm2-135m with fields overridden, as its script's command line."""
    argv = ["--config", os.path.join(RECIPES, recipe)]
    for k, v in overrides.items():
        argv += [f"--{k}", str(v)]
    return argv


def _finished(report: str) -> dict | None:
    """A stage's report if it finished in an earlier run (resuming skips it), else None."""
    if not os.path.exists(report):
        return None
    with open(report, encoding="utf-8") as f:
        return json.load(f)


def _sft(recipe: str, **overrides) -> dict:
    from . import sft

    done = _finished(os.path.join(overrides["output_dir"], "train_report.json"))
    return done or sft.main(_argv(recipe, **overrides))


def _kto(out: str, model_dir: str, problems, args) -> dict:
    from . import kto

    done = os.path.join(out, "kto_report.json")
    if (report := _finished(done)) is not None:
        return report
    recipe = _argv("toy-kto.yaml", model_name_or_path=model_dir, output_dir=out)
    config, model, chat, sampling = kto.parse_recipe(kto.RECIPE, recipe)
    sampling.run = {**sampling.run, "engine": args.engine}
    os.makedirs(out, exist_ok=True)
    rows = kto.sample_completions(sampling, model_dir, problems,
                                  os.path.join(out, "kto_data.jsonl"))
    good = sum(r["label"] for r in rows)
    if good in (0, len(rows)):  # nothing to prefer: KTO cannot learn, and says so
        report = {"skipped": f"{good} of {len(rows)} samples correct: KTO needs both",
                  "examples": len(rows), "desirable": good}
        write_json(done, report)
        return report
    return kto.train(config, model, chat, rows, model_dir)


def _gptq(out: str, model_dir: str, calibration: str) -> dict:
    done = os.path.join(out, "quantize_recipe.json")
    if not _finished(done):  # gptqmodel in its own process (it writes logs/ where it runs)
        os.makedirs(out, exist_ok=True)
        env = module_env({**os.environ, "GPTQMODEL_CPU_WORKERS": str(os.cpu_count() or 2)})
        subprocess.run([sys.executable, "-m", "training.quantize", *_argv(
            "toy-gptq.yaml", model_name_or_path=model_dir, output_dir=out,
            calibration_dataset=calibration)], check=True, cwd=out, env=env)
    return _finished(done)


def evaluate(model_dir: str | None, sets: dict, out: str, args) -> dict:
    """maj@N per held-out set over the seeds, the model served as the notebook serves it."""
    config = resolve(RunConfig.load(values=dict(
        model=model_dir, engine=args.engine, competition="aimo3", num_samples=args.samples,
        max_rounds=3, max_new_tokens=args.eval_tokens, temperature=0.7, early_stop="off")),
        machine_probe())
    cfg = config.solver_config()
    seeds = list(range(args.seeds))
    scores = {}
    with config.engine.build() as engine, Sandbox() as sandbox:
        for name, problems in sets.items():
            run_out = os.path.join(out, name)
            runner = eval_runner(config, run_out, engine=engine, sandbox=sandbox)
            summary = run_eval(
                problems, runner, seeds, run_out,
                {"dataset": f"toy-{name}", "model": model_dir, "engine": type(engine).__name__,
                 "solver": cfg.to_dict()}, concurrency=args.concurrency, progress=False)
            scores[name] = {"maj": summary["maj_at_n"]["mean"],
                            "maj_per_seed": summary["maj_at_n"]["per_seed"],
                            "pass": summary["pass_at_n"]["mean"]}
        scores["engine"] = type(engine).__name__
        scores["prompt_template"] = cfg.prompt_template
    return scores


def heldout(n: int, seed: int, train: list[tuple[EvalProblem, str]], templates=SEEN
            ) -> list[EvalProblem]:
    """n problems of `templates` with new numbers (seeded), none of them a training problem."""
    seen = {p.problem for p, _ in train}
    return [p for p in synthetic_problems(4 * n, seed, templates) if p.problem not in seen][:n]


def stage1_cot(out: str, train: list[tuple[EvalProblem, str]], seed: int = 42,
               base: str | None = None, **overrides) -> dict:
    """Stage 1: CoT SFT of the base model (the recipe's: the embedded SmolLM2; or `base`, a
    checkpoint folder) on worked solutions in words (toy-cot.yaml; `overrides`: its fields)."""
    os.makedirs(out, exist_ok=True)
    cot = os.path.join(out, "cot.jsonl")
    with open(cot, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(cot_row(p, code)) + "\n" for p, code in train)
    if base is not None:
        overrides["model_name_or_path"] = base
    return _sft("toy-cot.yaml", dataset_name=cot, output_dir=os.path.join(out, "stage1-cot"),
                seed=seed, **overrides)


def tir_data(out: str, train: list[tuple[EvalProblem, str]]) -> tuple[str, dict]:
    """The programmatic teacher's TIR data through the real generation path: (path, counts)."""
    from .generate_tir_data import generate

    tir = os.path.join(out, "tir.jsonl")
    teacher_cfg = SolverConfig.preset("default", num_samples=1, early_stop=None,
                                      competition="aimo3", prompt_template="chatml_tir")
    with Sandbox() as sandbox:
        counts = generate([p for p, _ in train], programmatic_teacher(), sandbox, tir,
                          attempts=4, config=teacher_cfg, progress=False)
    return tir, counts


def stage2_tir(out: str, stage1_dir: str, tir: str, seed: int = 42, **overrides) -> dict:
    """Stage 2: TIR SFT of the stage-1 model on the TIR data (toy-tir.yaml)."""
    return _sft("toy-tir.yaml", dataset_name=tir, model_name_or_path=stage1_dir,
                output_dir=os.path.join(out, "stage2-tir"), seed=seed, **overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/toy")
    ap.add_argument("--train", type=int, default=120, help="training problems (seen templates)")
    ap.add_argument("--heldout", type=int, default=12, help="problems per held-out set")
    ap.add_argument("--kto-problems", type=int, default=32, help="problems KTO samples on")
    ap.add_argument("--seeds", type=int, default=2, help="evaluation seeds")
    ap.add_argument("--samples", type=int, default=4, help="N at evaluation")
    ap.add_argument("--eval-tokens", type=int, default=128, help="tokens per step at evaluation")
    ap.add_argument("--concurrency", type=int, default=4, help="problems solved at once")
    ap.add_argument("--engine", default="auto", choices=ENGINE_KINDS[:3],
                    help="serving engine (auto: vLLM where importable, else transformers)")
    args = ap.parse_args()
    start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    train = instances(args.train, seed=1)
    sets = {"seen-templates": heldout(args.heldout, 2, train),
            "unseen-templates": heldout(args.heldout, 3, train, UNSEEN)}
    kto_problems = [p for p in heldout(2 * args.kto_problems, 4, train)
                    if p.problem not in {q.problem for q in sets["seen-templates"]}]
    kto_problems = kto_problems[: args.kto_problems]
    result = {"train_problems": len(train), "heldout": {k: len(v) for k, v in sets.items()},
              "seeds": args.seeds, "samples": args.samples, "stages": {}}

    def record(name: str, model_dir: str | None, seconds: float, **facts) -> None:
        t = time.time()
        scores = evaluate(model_dir, sets, os.path.join(out, "eval", name), args)
        result["stages"][name] = {"model": model_dir, "train_seconds": round(seconds),
                                  "eval_seconds": round(time.time() - t), **scores, **facts}
        write_json(os.path.join(out, "toy_result.json"), result)
        print(f"[toy] {name}: " + ", ".join(f"{k} maj@{args.samples} {scores[k]['maj']:.1%}"
                                             for k in sets), flush=True)

    record("base", None, 0)

    t = time.time()
    r1 = stage1_cot(out, train)
    record("stage1-cot", r1["output_dir"], time.time() - t, loss=[r1["losses"][0],
                                                                  r1["losses"][-1]])

    tir, result["tir_data"] = tir_data(out, train)
    t = time.time()
    r2 = stage2_tir(out, r1["output_dir"], tir)
    record("stage2-tir", r2["output_dir"], time.time() - t, loss=[r2["losses"][0],
                                                                  r2["losses"][-1]])

    t = time.time()
    r3 = _kto(os.path.join(out, "kto"), r2["output_dir"], kto_problems, args)
    kto_dir = r2["output_dir"] if "skipped" in r3 else r3["output_dir"]
    record("kto", kto_dir, time.time() - t, examples=r3["examples"],
           desirable=r3["desirable"], note=r3.get("skipped"))

    t = time.time()
    q = _gptq(os.path.join(out, "gptq-8bit"), kto_dir, tir)
    record("gptq-8bit", q["output_dir"], time.time() - t, bits=q["bits"])

    result["total_seconds"] = round(time.time() - start)
    write_json(os.path.join(out, "toy_result.json"), result)
    print("[toy] " + json.dumps(result), flush=True)
    for name, s in result["stages"].items():
        print(f"[toy] {name:<12} " + "  ".join(
            f"{k}: {s[k]['maj']:.1%} (seeds {', '.join(f'{x:.0%}' for x in s[k]['maj_per_seed'])})"
            for k in sets) + f"  [{s['engine']}]")
    print(f"[toy] {result['total_seconds']} s in all")


if __name__ == "__main__":
    main()
