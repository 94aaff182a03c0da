"""The decoding presets against the seed's loop, end to end on a model that can solve.

    python -m bench.presets                 # 48 held-out problems x 2 seeds (~15 min, 2 cores)
    python -m bench.presets --quick         # a smoke run: 4 problems, 1 seed, N=4
    python -m bench.presets --model embedded --quick    # on the embedded SmolLM2 instead

One run, one engine (vLLM on CPU serving the benchmark model of bench/model.py, built first if
it is not cached), the same problems and seeds for every arm, N and M equal:

- numina_aimo1: the AIMO-1 winning notebook's loop, rule for rule (the baseline);
- default: ours (stop at the first answer, consensus early stop, async, stateful code);
- aimo3_style: the AIMO 3 public notebooks' decoding (the aimo3_gpt_oss preset's policy: early
  stop at 4 of 8, votes weighted by tail entropy, a second wave of N with the candidates when
  the first has no consensus) in the dialect this model speaks (ToRA, not harmony);
- two_waves: default, but 4 samples first and the other N-4 only when those 4 do not all agree
  (the solver's second wave with no candidates in its prompt: a plain resample), the stopping
  mode that saves half the tokens in bench/stopping.py's replay; at most N samples.

With --model harmony (the tiny gpt-oss of bench/harmony_model.py, AIMO 3 rules, baseline
default): default (the default preset's decoding in harmony), aimo3_gpt_oss (scaled for CPU),
aimo3_stop_at_boxed (its stream cut at the first \\boxed{}); and with --arms,
aimo3_plain_prompt (its prompt without the answer rules and the check-before-boxing list). A run
with that arm serves the harmony model built with half its solutions under each prompt
(bench/harmony_model.py --plain-prompt-share 0.5; built on first use, about 20 minutes), since
the shipped one, trained on the preset's prompt alone, would only show that a prompt it never
saw derails it.

Every arm gets the model's own chat template (prompt_template auto) and the AIMO-1 answer rules
(mod 1000; the seed's preset has no other). Problems are solved one at a time (as on Kaggle),
the arms interleaved problem by problem in rotating order, so a load change on the machine
touches every arm alike. Per arm: accuracy maj@N (the answer submitted) with a 95% bootstrap
interval over problems, and the paired difference to numina_aimo1; wall seconds, tokens and
code executions per problem; the speed-up over numina_aimo1 with its paired bootstrap interval.
Tokens count completed requests only (a request aborted by early stop is not counted; wall time
is the measure that includes it). Each arm is also an `aimo eval` run folder (records, config,
summary, report, plots) under --out; presets.json and presets.png summarise them. The last line:
`speedup X.XXx at accuracy A% vs B%` (default against numina_aimo1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace

from aimo_lib import SolverConfig
from aimo_lib.config import RunConfig
from aimo_lib.evaluation import eval_runner, run_eval
from aimo_lib.sandbox import Sandbox

from . import model as bench_model
from ._machine import machine
from ._stats import diff_ci, mean_ci, ratio_ci
from .plots import plot_presets

ARMS = ("numina_aimo1", "default", "aimo3_style", "two_waves")
# Not in the default run; --arms takes them: the default preset with the answer rules stated and
# the check-before-boxing list in its prompt (the prompt options aimo3_gpt_oss turns on).
EXTRA_ARMS = ("answer_rules",)
BASELINE = "numina_aimo1"
# On the harmony benchmark model (--model harmony): the AIMO 3 preset, scaled for CPU, against
# the default preset in the same dialect and prompt, the preset with the public notebooks'
# stream cut at the first \boxed{}. Not in the default run: the preset without its two prompt
# options (answer rules, check-before-boxing list), on a build trained on both prompts.
HARMONY_ARMS = ("default", "aimo3_gpt_oss", "aimo3_stop_at_boxed")
HARMONY_EXTRA_ARMS = ("aimo3_plain_prompt",)
HARMONY_BASELINE = "default"


def arm_configs(n: int, m: int, tokens: int, temperature: float,
                arms: tuple[str, ...] = ARMS) -> dict[str, SolverConfig]:
    """Each arm's solver config: its preset, with N, M, tokens per step, temperature, the
    model's own template and the AIMO-1 answer rules the same for all."""
    common = dict(num_samples=n, max_rounds=m, max_new_tokens=tokens, temperature=temperature,
                  prompt_template="auto", competition="aimo1")
    out = {}
    for arm in arms:
        if arm == "two_waves":  # 4 samples; the other N-4 only if the 4 do not all agree
            out[arm] = SolverConfig.preset(
                "default", **{**common, "num_samples": min(4, n)}, retry_samples=max(0, n - 4),
                retry_candidates=0, retry_below=1.0)
        elif arm == "answer_rules":  # default, with the prompt options aimo3_gpt_oss turns on
            out[arm] = SolverConfig.preset("default", **common, state_answer_rules=True,
                                           check_before_boxing=True)
        elif arm == "aimo3_style":  # the AIMO 3 preset's policy in the ToRA dialect, at this size
            out[arm] = SolverConfig.preset(
                "aimo3_gpt_oss", dialect="tora", max_tool_calls=None, sample_max_tokens=None,
                code_timeout_s=5.0, max_output_chars=1000, retry_samples=n,
                entropy_tail_tokens=16, **common)  # ~the last third of a 50-token trace
        else:
            out[arm] = SolverConfig.preset(arm, **common)
    return out


def harmony_arm_configs(n: int, tokens: int, arms: tuple[str, ...] = HARMONY_ARMS
                        ) -> dict[str, SolverConfig]:
    """The harmony arms: `aimo3_gpt_oss` at CPU scale (bench/harmony_model.py: the prompt the
    model was trained on) with N and tokens per step given; `default` the default preset's
    decoding (its temperature, early stop, votes, no tool-call cap) in the same dialect and
    prompt, so that only the decoding differs; `aimo3_plain_prompt` the preset's prompt without
    the answer rules and the check-before-boxing list (the other prompt the model was trained
    on), so that only the prompt differs."""
    from . import harmony_model

    scaled = harmony_model.cpu_config(num_samples=n, max_new_tokens=tokens)
    out = {}
    for arm in arms:
        if arm == "default":
            out[arm] = SolverConfig.preset(
                "default", num_samples=n, max_new_tokens=tokens, dialect="harmony",
                competition=scaled.competition, reasoning_effort=scaled.reasoning_effort,
                state_answer_rules=True, check_before_boxing=True, stop_at_boxed=False,
                sample_max_tokens=scaled.sample_max_tokens)
        elif arm == "aimo3_stop_at_boxed":
            out[arm] = replace(scaled, stop_at_boxed=True)
        elif arm == "aimo3_gpt_oss":
            out[arm] = scaled
        elif arm == "aimo3_plain_prompt":
            out[arm] = replace(scaled, state_answer_rules=False, check_before_boxing=False)
        else:
            raise SystemExit(f"unknown harmony arm {arm!r}; choose from "
                             f"{HARMONY_ARMS + HARMONY_EXTRA_ARMS}")
    return out


def resolve_model(name: str | None, arms: tuple[str, ...] = ()) -> str:
    """The model's folder: the benchmark model (built if missing), "embedded" (SmolLM2,
    written once as a checkpoint), "harmony" (the harmony benchmark model; the build trained on
    both prompts when an arm compares them), or a checkpoint folder as given."""
    if name == "embedded":
        from aimo_lib.models import embedded_checkpoint

        return embedded_checkpoint()
    if name == "harmony":
        from . import harmony_model

        both = any(a in HARMONY_EXTRA_ARMS for a in arms)  # the cached one, or built (~20 min)
        return harmony_model.build(plain_prompt_share=harmony_model.BOTH_PROMPTS if both else None)
    if name:
        return name
    try:
        return bench_model.benchmark_model()
    except bench_model.ModelNotBuiltError:
        print("[bench] the benchmark model is not built yet: building it (about 15-20 min; "
              "once)", file=sys.stderr, flush=True)
        return bench_model.build()


def run(args) -> dict:
    problems = bench_model.load_heldout(limit=args.problems)
    seeds = list(range(args.seeds))
    model = resolve_model(args.model, args.arms)
    if args.model == "harmony":
        configs = harmony_arm_configs(args.num_samples, args.max_new_tokens, args.arms)
    else:
        configs = arm_configs(args.num_samples, args.max_rounds, args.max_new_tokens,
                              args.temperature, args.arms)
    baseline = _pair(args)[0]
    competition = configs[baseline].competition
    stored = os.path.join(args.out, "config.json")
    if args.resume and os.path.exists(stored):  # records of another model must not be mixed in
        with open(stored, encoding="utf-8") as f:
            before = json.load(f).get("model")
        if before != model:
            raise SystemExit(f"--resume: {args.out} holds a run on {before}, this one is on "
                             f"{model}; give another --out, or drop --resume to start afresh")
    if os.path.exists(args.out) and not args.resume:
        shutil.rmtree(args.out)  # one run, one machine state: no figures mixed across runs
    os.makedirs(args.out, exist_ok=True)
    run_config = RunConfig.load(values=dict(model=model, engine=args.engine,
                                            competition=competition))
    meta = {"dataset": "toy_heldout", "model": model, "competition": competition,
            "problems": len(problems), "seeds": seeds, "machine": machine(),
            "load_before": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "arms": {a: c.to_dict() for a, c in configs.items()}}
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, default=str)  # again at the end, with the run's facts
    summaries = {}
    start = time.time()
    with run_config.engine.build() as engine, Sandbox() as sandbox:
        meta["engine"] = type(engine).__name__
        runners = {a: eval_runner(run_config, os.path.join(args.out, a), engine=engine,
                                  sandbox=sandbox, solver=c) for a, c in configs.items()}
        warm_up(engine, sandbox, configs)
        done = {a: r.done() for a, r in runners.items()}
        arms = list(configs)
        todo = [(s, i, p) for s in seeds for i, p in enumerate(problems)]
        for n, (s, i, p) in enumerate(todo, 1):
            order = arms[i % len(arms):] + arms[:i % len(arms)]  # rotate: no arm always first
            for arm in order:
                if (p.id, s) not in done[arm]:
                    runners[arm].solve(p.problem, p.id, seed=s, record={"truth": p.answer})
            print(f"[bench] {n}/{len(todo)} solves per arm done", file=sys.stderr, flush=True)
        meta["seconds"] = round(time.time() - start)
        meta["load_after"] = os.getloadavg()[0]
        for arm, runner in runners.items():  # everything is recorded: this only summarises
            arm_meta = {"dataset": "toy_heldout", "model": meta["model"], "arm": arm,
                        "engine": meta["engine"], "seeds": seeds,
                        "solver": configs[arm].to_dict()}
            summaries[arm] = run_eval(problems, runner, seeds, os.path.join(args.out, arm),
                                      arm_meta, progress=False)
        meta["engine_profile"] = engine_profile(engine, configs[baseline])
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, default=str)
    return report(args, meta, problems, seeds, summaries)


def engine_profile(engine, config: SolverConfig, tokens: int = 30) -> dict[int, list[float]]:
    """k -> [seconds, mean tokens generated] for k requests of up to `tokens` tokens at once
    (k = 1, 4, 8, 16; the best of 3), the prompt as `config` renders it: what a sample that
    the vote does not need costs."""
    from aimo_lib.dialects import get_dialect
    from aimo_lib.engines import GenerationParams
    from aimo_lib.solver import first_prompt

    dialect = get_dialect(config.dialect, config.reasoning_effort)
    prompt = first_prompt(config, dialect, "What is 19 * 23?", engine)
    out = {}
    for k in (1, 4, 8, 16):
        best = [float("inf"), 0.0]
        for attempt in range(3):
            params = [GenerationParams(max_tokens=tokens, temperature=0.7, seed=attempt * 100 + i)
                      for i in range(k)]
            start = time.perf_counter()
            done = engine.generate([prompt] * k, params)
            took = time.perf_counter() - start
            if took < best[0]:
                best = [took, statistics.mean(c.num_tokens for c in done)]
        out[k] = best
    return out


def warm_up(engine, sandbox, configs: dict) -> None:
    """One untimed, unrecorded solve per arm: the engine's first requests and the sandbox's
    first sessions cost more than later ones, and the first arm must not pay for all."""
    from aimo_lib.solver import Solver

    for config in configs.values():
        Solver(engine, sandbox, config).solve("What is 12 * 34?")


def per_problem(summary_dir: str, problems, rules) -> dict[str, dict[str, float]]:
    """problem id -> that problem's accuracy (answers as the competition's `rules` take them),
    seconds, tokens and code executions (mean over seeds), read back from the arm's records."""
    from aimo_lib.evaluation import load_records

    by_id: dict[str, list[dict]] = {}
    for r in load_records(summary_dir):
        by_id.setdefault(r["id"], []).append(r)
    truth = {p.id: rules.apply(p.answer) for p in problems}
    out = {}
    for pid, rs in by_id.items():
        res = [r["result"] for r in rs]
        out[pid] = {
            "correct": statistics.mean(float(not x["fallback"] and x["answer"] == truth[pid])
                                       for x in res),
            "seconds": statistics.mean(x["elapsed_s"] for x in res),
            "tokens": statistics.mean(x["tokens_generated"] for x in res),
            "code": statistics.mean(sum(len(s["code_calls"]) for s in x["samples"])
                                    for x in res),
            "stopped": statistics.mean(float(x["stopped_early"]) for x in res),
            # the longest sample's tokens: the sequential decoding a problem cannot avoid
            "longest": statistics.mean(max((s["tokens"] for s in x["samples"]), default=0)
                                       for x in res),
            "retried": statistics.mean(float(any(s.get("wave") for s in x["samples"]))
                                       for x in res)}
    return out


def report(args, meta: dict, problems, seeds, summaries: dict) -> dict:
    from aimo_lib.competitions import get_competition

    ids = [p.id for p in problems]
    baseline, pair = _pair(args)
    rules = get_competition(meta.get("competition", "aimo1")).rules
    rows = {a: per_problem(os.path.join(args.out, a), problems, rules) for a in summaries}
    base = rows[baseline]
    table = []
    for arm, per in rows.items():
        col = lambda key, per=per: [per[i][key] for i in ids]  # noqa: E731
        acc = statistics.mean(col("correct"))
        secs, tokens = statistics.mean(col("seconds")), statistics.mean(col("tokens"))
        base_secs = statistics.mean(base[i]["seconds"] for i in ids)
        table.append({
            "arm": arm, "accuracy": 100 * acc,
            "accuracy_ci": [100 * x for x in mean_ci(col("correct"))],
            "delta_vs_baseline": 100 * (acc - statistics.mean(base[i]["correct"] for i in ids)),
            "delta_ci": [100 * x for x in diff_ci([base[i]["correct"] for i in ids],
                                                  col("correct"))],
            "seconds": secs, "tokens": tokens, "code_executions": statistics.mean(col("code")),
            "longest_sample_tokens": statistics.mean(col("longest")),
            "stopped_early": 100 * statistics.mean(col("stopped")),
            "retried": 100 * statistics.mean(col("retried")),
            "finished_samples": summaries[arm]["finished_samples_per_problem"],
            "speedup": base_secs / secs,
            "speedup_ci": list(ratio_ci([base[i]["seconds"] for i in ids], col("seconds"))),
            "token_ratio": statistics.mean(base[i]["tokens"] for i in ids) / max(tokens, 1e-9)})
    base_cfg = meta["arms"][baseline]
    n, m = base_cfg["num_samples"], base_cfg["max_rounds"]
    print(f"\n## presets: {len(ids)} held-out toy problems (bench/data/toy_heldout.jsonl) x "
          f"seeds {seeds}, N={n}, M={m}, {base_cfg['max_new_tokens']} tokens per step, "
          f"T={base_cfg['temperature']}; {meta['model']} on {meta.get('engine')}; "
          f"{meta['machine']}; started {meta['started']}, load {meta['load_before']:.2f} "
          f"before, {meta.get('load_after', float('nan')):.2f} after; {meta.get('seconds')} s")
    print(f"{'arm':<20}{'maj@N':>7}{'95% CI':>14}{'vs base':>9}{'95% CI':>16}{'s/problem':>11}"
          f"{'tokens':>8}{'longest':>9}{'code':>6}{'early':>7}{'retry':>7}{'speedup':>9}"
          f"{'95% CI':>14}")
    for r in table:
        print(f"{r['arm']:<20}{r['accuracy']:>6.1f}%{_ci(r['accuracy_ci']):>14}"
              f"{r['delta_vs_baseline']:>+8.1f}{_ci(r['delta_ci']):>16}{r['seconds']:>11.2f}"
              f"{r['tokens']:>8.0f}{r['longest_sample_tokens']:>9.1f}{r['code_executions']:>6.1f}"
              f"{r['stopped_early']:>6.0f}%{r['retried']:>6.0f}%{r['speedup']:>8.2f}x"
              f"{_ci(r['speedup_ci'], 'x'):>14}")
    profile = meta.get("engine_profile")
    if profile:
        print("engine: k requests at once, seconds (tokens each): " + ", ".join(
            f"k={k}: {v[0]:.2f} s ({v[1]:.0f})" for k, v in profile.items())
            + "; where k barely changes the time, a sample the vote did not need cost tokens, "
            "not time")
    result = {"meta": meta, "table": table}
    with open(os.path.join(args.out, "presets.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    plot_presets([{"label": r["arm"], "accuracy": r["accuracy"], "tokens": r["tokens"],
                   "accuracy_ci": r["accuracy_ci"], "seconds": r["seconds"]} for r in table],
                 os.path.join(args.out, "presets.png"),
                 f"presets: toy held-out ({len(ids)} x {len(seeds)} seeds), "
                 f"{os.path.basename(str(meta['model']).rstrip('/'))}, N={n}, M={m}")
    d = next(r for r in table if r["arm"] == pair)
    b = next(r for r in table if r["arm"] == baseline)
    print(f"results: {args.out}/presets.json, presets.png, one aimo eval folder per arm")
    print(f"speedup {d['speedup']:.2f}x at accuracy {d['accuracy']:.1f}% vs {b['accuracy']:.1f}%")
    return result


def _ci(ci, unit: str = "") -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if not unit else f"[{ci[0]:.2f}, {ci[1]:.2f}]{unit}"


def _pair(args) -> tuple[str, str]:
    """(baseline, the arm whose speed-up over it the last line gives)."""
    if args.model == "harmony":
        return HARMONY_BASELINE, "aimo3_gpt_oss"
    return BASELINE, "default"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 4 problems (2 seen, 2 unseen templates), 1 seed, N=4")
    ap.add_argument("--problems", type=int, default=None,
                    help="held-out problems, taken evenly from both kinds (default: all 48)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..S-1, the same for every arm")
    ap.add_argument("--num-samples", type=int, default=8, help="N, every arm")
    ap.add_argument("--max-rounds", type=int, default=3, help="M, every arm")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="tokens per step")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--arms", default=None, help=f"comma-separated, from {ARMS + EXTRA_ARMS} "
                    f"(default: {ARMS}), or with --model harmony from "
                    f"{HARMONY_ARMS + HARMONY_EXTRA_ARMS} (default: {HARMONY_ARMS})")
    ap.add_argument("--model", default=None, help="a checkpoint folder, 'embedded' "
                    "(SmolLM2), or 'harmony' (the tiny gpt-oss of bench/harmony_model.py, "
                    "in harmony, AIMO 3 rules; N and tokens per step apply, M and the "
                    "temperature are the presets'); default: the benchmark model "
                    "(bench/model.py)")
    ap.add_argument("--engine", default="vllm", choices=("vllm", "hf"),
                    help="vllm: vLLM (the CPU build here); hf: transformers")
    ap.add_argument("--out", default="runs/bench-presets")
    ap.add_argument("--resume", action="store_true",
                    help="keep what --out already holds (default: start afresh)")
    ap.add_argument("--report-only", action="store_true",
                    help="print the table of what --out holds (solves nothing)")
    args = ap.parse_args(argv)
    default = HARMONY_ARMS if args.model == "harmony" else ARMS
    args.arms = tuple(args.arms.split(",")) if args.arms else default
    known = HARMONY_ARMS + HARMONY_EXTRA_ARMS if args.model == "harmony" else ARMS + EXTRA_ARMS
    unknown = [a for a in args.arms if a not in known]
    if unknown:  # before a model is loaded or built
        ap.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    missing = [a for a in _pair(args) if a not in args.arms]
    if missing:
        ap.error(f"--arms must include {' and '.join(_pair(args))} (the speed-up's pair); "
                 f"missing: {', '.join(missing)}")
    if args.quick:
        args.problems = args.problems or 4
        args.seeds, args.num_samples = 1, 4
    if args.report_only:
        with open(os.path.join(args.out, "config.json"), encoding="utf-8") as f:
            meta = json.load(f)
        summaries = {}
        for arm in meta["arms"]:
            with open(os.path.join(args.out, arm, "summary.json"), encoding="utf-8") as f:
                summaries[arm] = json.load(f)
        problems = bench_model.load_heldout(limit=meta["problems"])
        return report(args, meta, problems, meta["seeds"], summaries)
    return run(args)


if __name__ == "__main__":
    main()
