"""The validation harness: maj@N and pass@N over seeds on Numina's validation sets.

    aimo eval --dataset amc --engine openai --openai-url http://127.0.0.1:8000/v1 --seeds 5
    aimo eval compare runs/amc-a runs/amc-b

A run solves every (problem, seed) pair with the solver and appends each SolveResult to
`samples.jsonl` as it finishes (so a rerun skips what is done and a crash loses at most the
problems in flight), then writes `summary.json`, `report.md` and PNG plots beside
`config.json`. maj@k for k <= N comes from the saved samples (subsets of each seed's N
samples), with no new generation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from .competitions import get_competition
from .kaggle.gateway import Problem, check_limit
from .records import read_jsonl, read_rows
from .results import fallback_cause, model_answer
from .voting import vote

__all__ = ["DATASETS", "EvalProblem", "compare_runs", "eval_runner", "finished_answers",
           "load_eval_dataset", "maj_at_k", "pyplot", "run_eval", "save_figure", "summarize"]

# name -> (Numina's hub dataset, file name of the local JSONL copy)
DATASETS = {
    "aime": ("AI-MO/aimo-validation-aime", "aime_2022_2024.jsonl"),
    "amc": ("AI-MO/aimo-validation-amc", "amc12_2022_2023_int.jsonl"),
    "math4": ("AI-MO/aimo-validation-math-level-4", "math_level4_int.jsonl"),
    "math5": ("AI-MO/aimo-validation-math-level-5", "math_level5_int.jsonl"),
    "aimo1": (None, "aimo1_train.jsonl"),
}


@dataclass
class EvalProblem(Problem):
    answer: int = 0  # always known in an evaluation


def _local_dir(data_dir: str | None) -> str | None:
    return data_dir or os.environ.get("AIMO_DATA_DIR")


def load_eval_dataset(name: str, data_dir: str | None = None,
                      limit: int | None = None) -> tuple[list[EvalProblem], list[str]]:
    """Problems of a named set or a .jsonl/.csv file, and a note per skipped row.

    Named sets are read from `data_dir` (or $AIMO_DATA_DIR) when it holds the JSONL copy,
    else from the hub with `datasets`. Rows whose answer is not an integer are skipped and
    reported; rows without a problem or an answer are errors. `limit`: the first N
    (gateway.check_limit: an integer >= 1, or None).
    """
    limit = check_limit(limit)
    if name in DATASETS:
        hub, filename = DATASETS[name]
        local = _local_dir(data_dir)
        if local and os.path.exists(os.path.join(local, filename)):
            rows = read_rows(os.path.join(local, filename))
        elif hub is None:
            raise FileNotFoundError(f"dataset {name!r} has no hub copy: put {filename} in "
                                    "--data-dir or $AIMO_DATA_DIR")
        else:
            rows = _hub_rows(hub)
    elif name.endswith((".jsonl", ".csv")):
        if not os.path.exists(name):
            raise FileNotFoundError(f"no dataset file at {name}")
        rows = read_rows(name)
    else:
        raise ValueError(f"unknown dataset {name!r}: one of {', '.join(DATASETS)}, or a path "
                         "to a .jsonl/.csv file with problem and answer columns")
    problems, skipped = [], []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "problem" not in row or "answer" not in row:
            raise ValueError(f"{name}: row {n} needs 'problem' and 'answer' fields")
        pid = str(row.get("id", n - 1))
        try:
            answer = int(str(row["answer"]).strip())
        except ValueError:
            skipped.append(f"{pid}: answer {row['answer']!r} is not an integer")
            continue
        problems.append(EvalProblem(pid, str(row["problem"]), answer))
    return (problems[:limit] if limit else problems), skipped


def _hub_rows(hub: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise RuntimeError(f"loading {hub} needs `pip install datasets` and hub access; or "
                           "pass --data-dir with the JSONL copies") from None
    return [dict(r) for r in datasets.load_dataset(hub, split="train")]


# ---------------------------------------------------------------- metrics


def _correct(answer: int | None, truth: int, competition: str) -> bool:
    rules = get_competition(competition).rules
    return answer is not None and answer == rules.apply(truth)


def maj_at_k(answers: list[int | None], truth: int, k: int, competition: str = "aimo1",
             draws: int = 400, seed: int = 0) -> float:
    """P(a majority vote over k of these samples is correct): exact over all k-subsets when
    there are few, else the mean over `draws` random subsets (unbiased)."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}")
    if math.comb(n, k) <= draws:
        subsets = itertools.combinations(range(n), k)
    else:
        rng = random.Random(seed)
        subsets = (rng.sample(range(n), k) for _ in range(draws))
    hits = total = 0
    for idx in subsets:
        v = vote([answers[i] for i in sorted(idx)], rules=get_competition(competition).rules)
        hits += (not v.fallback) and _correct(v.answer, truth, competition)
        total += 1
    return hits / total


def finished_answers(result: dict) -> list[int | None]:
    """The answers of a solve's samples that finished: a sample cancelled by early stop never
    gave its answer, so it is left out rather than counted as wrong (the run chose not to
    finish it). Timed-out and failed samples stay in: losing them is the run's fault."""
    return [x["answer"] for x in result["samples"] if x.get("status") != "cancelled"]


def summarize(records: list[dict], problems: list[EvalProblem], competition: str) -> dict:
    """Metrics from saved records ({"id", "seed", "result": SolveResult dict}).

    maj@k draws k of each solve's finished samples (finished_answers: an early-stopped run's
    cancelled samples are not counted as wrong); where fewer than k finished (early stop, or
    a failed solve), the solve's own answer stands for its maj@k. So an early-stopped run's
    maj@k for k above the samples it let finish is its accuracy, and below that it is over
    the samples that finished first."""
    truth = {p.id: p.answer for p in problems}
    by_seed: dict[int, list[dict]] = {}
    for r in records:
        if r["id"] in truth:
            by_seed.setdefault(r["seed"], []).append(r)
    seeds = sorted(by_seed)
    n = max((len(r["result"]["samples"]) for r in records), default=0)
    # An answer counts only when a sample produced it: a fallback that happens to be the truth
    # (0, a common AIMO answer) is no solve.
    maj = [statistics.mean(_correct(model_answer(r["result"]), truth[r["id"]], competition)
                           for r in by_seed[s]) for s in seeds]
    pass_n = [statistics.mean(any(_correct(x["answer"], truth[r["id"]], competition)
                                  for x in r["result"]["samples"]) for r in by_seed[s])
              for s in seeds]
    ks = sorted({1, 2, 4, 8, 16, 32, 48, 64, n} & set(range(1, n + 1)))

    def maj_k(r: dict, k: int) -> float:
        answers = finished_answers(r["result"])
        if len(answers) < k:  # the solve's own answer (fewer finished, or none: failed)
            return float(_correct(model_answer(r["result"]), truth[r["id"]], competition))
        return maj_at_k(answers, truth[r["id"]], k, competition)

    per_seed = {k: [statistics.mean(maj_k(r, k) for r in by_seed[s]) for s in seeds]
                for k in ks}
    curve = {k: statistics.mean(v) for k, v in per_seed.items()}
    per_problem = []
    for p in problems:
        rs = [r for s in seeds for r in by_seed[s] if r["id"] == p.id]
        if not rs:
            continue
        votes: dict[str, float] = {}
        for r in rs:
            for a, c in r["result"]["votes"].items():
                votes[a] = votes.get(a, 0.0) + c
        ranked = sorted(votes.values(), reverse=True) + [0.0, 0.0]
        total = sum(votes.values()) or 1.0
        per_problem.append({
            "id": p.id, "truth": p.answer,
            "answers": [r["result"]["answer"] for r in rs],
            "correct": statistics.mean(_correct(model_answer(r["result"]), p.answer,
                                                competition) for r in rs),
            "votes": dict(sorted(votes.items(), key=lambda kv: -kv[1])[:5]),
            "margin": (ranked[0] - ranked[1]) / total})
    results = [r["result"] for r in records]
    samples = [x for res in results for x in res["samples"]]
    causes = Counter(c for r in records if (c := fallback_cause(r)) is not None)
    return {
        "problems": len(per_problem), "seeds": seeds, "num_samples": n,
        "maj_at_n": {"mean": statistics.mean(maj) if maj else 0.0,
                     "std": statistics.stdev(maj) if len(maj) > 1 else 0.0, "per_seed": maj},
        "pass_at_n": {"mean": statistics.mean(pass_n) if pass_n else 0.0,
                      "std": statistics.stdev(pass_n) if len(pass_n) > 1 else 0.0},
        "maj_at_k": {str(k): v for k, v in curve.items()},
        "maj_at_k_per_seed": {str(k): v for k, v in per_seed.items()},
        "finished_samples_per_problem": statistics.mean(
            len(finished_answers(r)) for r in results) if results else 0.0,
        "tokens_per_problem": statistics.mean(r["tokens_generated"] for r in results),
        "seconds_per_problem": statistics.mean(r["elapsed_s"] for r in results),
        "code_calls_per_sample": statistics.mean(len(x["code_calls"]) for x in samples)
        if samples else 0.0,
        "failed": sum(bool(r.get("failed")) for r in records),
        # solves whose answer a sample produced, and why the others got the fallback
        "by_model": len(records) - sum(causes.values()),
        "fallbacks": dict(causes.most_common()),
        "stopped_early": statistics.mean(r["stopped_early"] for r in results),
        "timed_out": statistics.mean(r.get("timed_out", False) for r in results),
        "per_problem": per_problem,
    }


# ---------------------------------------------------------------- running


def load_records(out_dir: str) -> list[dict]:
    """Every (problem, seed) result saved so far, the latest per pair; a line that is no
    record (torn by a crash, malformed: read_jsonl) is skipped, and redone."""
    rows = read_jsonl(os.path.join(out_dir, "samples.jsonl"), ("id", "seed"), _no_result)
    return list({(r["id"], r.get("seed")): r for r in rows}.values())


_RESULT_FIELDS = ("answer", "fallback", "votes", "samples", "tokens_generated", "elapsed_s",
                  "stopped_early")


def _no_result(row: dict) -> str | None:
    """Why a record cannot be summarised (None: it can)."""
    result = row.get("result")
    if isinstance(row.get("seed"), bool) or not isinstance(row.get("seed"), int):
        return "no integer 'seed'"
    if not isinstance(result, dict) or not isinstance(result.get("samples"), list) or not (
            isinstance(result.get("votes"), dict)):
        return "no solve result in it"
    missing = [k for k in _RESULT_FIELDS if k not in result]
    return f"its result lacks {', '.join(missing)}" if missing else None


def eval_runner(config, out_dir: str, **kwargs):
    """The Runner of an evaluation run: its records are out_dir/samples.jsonl (one per
    problem and seed), its limit per problem config.time_limit_s (no budget)."""
    from .run import Runner

    return Runner(config, records=os.path.join(out_dir, "samples.jsonl"), **kwargs)


def run_eval(problems: list[EvalProblem], runner, seeds: list[int], out_dir: str, config: dict,
             concurrency: int = 1, progress: bool = True) -> dict:
    """Solve every (problem, seed) pair not yet in the runner's records (eval_runner:
    out_dir/samples.jsonl), `concurrency` at a time; then summarise into out_dir.

    `config` is written to config.json beside the results. A solve that fails is recorded
    with its traceback and the fallback answer (and redone by the next run); an engine that
    dies is restarted (aimo_lib.run).
    """
    from .run import Job

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, default=str)
    jobs = [Job(p.problem, p.id, seed=s, record={"truth": p.answer})
            for s in seeds for p in problems]
    for _ in runner.map(jobs, concurrency, progress, desc="eval"):
        pass
    competition = runner.competition
    records = load_records(out_dir)
    summary = summarize(records, problems, competition)
    summary.update(dataset=config.get("dataset"), competition=competition,
                   finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(report_markdown(summary, config))
    write_plots(summary, records, out_dir)
    return summary


def report_markdown(summary: dict, config: dict) -> str:
    m, p = summary["maj_at_n"], summary["pass_at_n"]
    lines = [f"# Evaluation: {config.get('dataset')} ({summary['problems']} problems, "
             f"seeds {summary['seeds']}, N={summary['num_samples']})", "",
             f"- maj@{summary['num_samples']}: {m['mean']:.1%} ± {m['std']:.1%} "
             f"(per seed: {', '.join(f'{x:.1%}' for x in m['per_seed'])})",
             f"- pass@{summary['num_samples']}: {p['mean']:.1%} ± {p['std']:.1%}",
             "- maj@k (over each solve's finished samples: cancelled ones are not counted as "
             "wrong): " + ", ".join(f"k={k}: {v:.1%}" for k, v in summary["maj_at_k"].items()),
             f"- samples finished per problem: "
             f"{summary.get('finished_samples_per_problem', summary['num_samples']):.1f} of "
             f"{summary['num_samples']}",
             f"- answered by the model (a sample gave the answer): {summary.get('by_model', '?')}"
             " solves" + "".join(f"; fallback {n}x: {why}"
                                 for why, n in summary.get("fallbacks", {}).items()),
             f"- per problem: {summary['tokens_per_problem']:.0f} tokens, "
             f"{summary['seconds_per_problem']:.1f} s; {summary['code_calls_per_sample']:.2f} "
             f"code calls per sample; stopped early {summary['stopped_early']:.0%}, timed out "
             f"{summary['timed_out']:.0%}", "",
             "| id | truth | answers | correct | margin | votes |", "|---|---|---|---|---|---|"]
    for r in summary["per_problem"]:
        votes = ", ".join(f"{a}:{c:g}" for a, c in r["votes"].items())
        lines.append(f"| {r['id']} | {r['truth']} | {r['answers']} | {r['correct']:.0%} | "
                     f"{r['margin']:.2f} | {votes} |")
    lines += ["", "Configuration: see config.json."]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt, fig, path: str) -> str:
    """`fig` written to `path` (PNG) and closed; the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # an outside legend stays in the picture
    plt.close(fig)
    return path


def _run_title(summary: dict, out_dir: str) -> str:
    """"dataset, model, N=.." for a run's plots (the model from its config.json)."""
    model = None
    try:
        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
            model = json.load(f).get("model")
    except (OSError, ValueError, AttributeError):
        pass
    model = os.path.basename(str(model).rstrip("/")) if model else "embedded SmolLM2"
    return f"{summary.get('dataset')}, {model}, N={summary.get('num_samples')}"


def write_plots(summary: dict, records: list[dict], out_dir: str) -> list[str]:
    """accuracy_vs_k.png (maj@k in percent against k on a log-2 axis with integer ticks, the
    mean over seeds with their range as a band), vote_margin.png, time_per_problem.png;
    titled with the dataset, the model and N (needs matplotlib; none without it)."""
    plt = pyplot()
    if plt is None:
        return []
    title = _run_title(summary, out_dir)
    ks = [int(k) for k in summary["maj_at_k"]]
    mean = [100 * v for v in summary["maj_at_k"].values()]
    per_seed = summary.get("maj_at_k_per_seed", {})
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if per_seed and len(next(iter(per_seed.values()))) > 1:
        lo = [100 * min(per_seed[str(k)]) for k in ks]
        hi = [100 * max(per_seed[str(k)]) for k in ks]
        ax.fill_between(ks, lo, hi, alpha=0.2, label=f"range over {len(summary['seeds'])} seeds")
    ax.plot(ks, mean, marker="o", label="mean over seeds" if per_seed else "maj@k")
    _k_axis(ax, ks)
    ax.set(ylim=(0, 100), xlabel="k (samples voted)", ylabel="maj@k accuracy (%)",
           title=f"maj@k: {title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    paths = [save_figure(plt, fig, os.path.join(out_dir, "accuracy_vs_k.png"))]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.hist([r["margin"] for r in summary["per_problem"]], bins=10, range=(0, 1))
    ax.set(xlabel="vote margin (top1 - top2) / votes", ylabel="problems",
           title=f"vote margins: {title}")
    paths.append(save_figure(plt, fig, os.path.join(out_dir, "vote_margin.png")))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.hist([r["result"]["elapsed_s"] for r in records], bins=20)
    ax.set(xlabel="seconds", ylabel="problems x seeds", title=f"time per problem: {title}")
    paths.append(save_figure(plt, fig, os.path.join(out_dir, "time_per_problem.png")))
    return paths


def _k_axis(ax, ks: list[int]) -> None:
    """k on a log-2 axis, ticked at the k measured, written as integers (1, 2, 4, 8...)."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlim(min(ks, default=1) / 1.3, max(ks, default=1) * 1.3)  # no samples: no k


# ---------------------------------------------------------------- comparing runs


def _runs(path: str) -> dict[str, str]:
    """dataset -> run folder; `path` is a run folder or a folder of run folders."""
    if os.path.exists(os.path.join(path, "summary.json")):
        return {_dataset_of(path): path}
    found = {}
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        sub = os.path.join(path, name)
        if os.path.exists(os.path.join(sub, "summary.json")):
            found[_dataset_of(sub)] = sub
    if not found:
        raise FileNotFoundError(f"{path}: no summary.json here or in its subfolders")
    return found


def _dataset_of(run: str) -> str:
    with open(os.path.join(run, "summary.json"), encoding="utf-8") as f:
        return str(json.load(f).get("dataset"))


def compare_runs(run_a: str, run_b: str, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Per dataset in both: accuracy of A and B over shared problems (mean over seeds), the
    delta B - A and its 95% paired-bootstrap confidence interval (problems resampled)."""
    a, b = _runs(run_a), _runs(run_b)
    rows = []
    rng = random.Random(seed)
    for dataset in sorted(set(a) & set(b)):
        acc = []
        for run in (a[dataset], b[dataset]):
            with open(os.path.join(run, "summary.json"), encoding="utf-8") as f:
                acc.append({r["id"]: r["correct"] for r in json.load(f)["per_problem"]})
        ids = sorted(set(acc[0]) & set(acc[1]))
        if not ids:
            continue
        diffs = [acc[1][i] - acc[0][i] for i in ids]
        boots = sorted(statistics.mean(rng.choices(diffs, k=len(diffs)))
                       for _ in range(resamples))
        rows.append({"dataset": dataset, "problems": len(ids),
                     "a": statistics.mean(acc[0][i] for i in ids),
                     "b": statistics.mean(acc[1][i] for i in ids),
                     "delta": statistics.mean(diffs),
                     "ci95": (boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1])})
    if not rows:
        raise ValueError(f"{run_a} and {run_b} share no dataset with common problems")
    return rows
