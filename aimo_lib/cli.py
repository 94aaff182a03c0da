"""The `aimo` command.

    aimo eval --dataset amc --engine hf --seeds 5 --out runs/amc
    aimo eval --dataset aime --engine openai --openai-url http://h1:8000/v1 \\
              --openai-url http://h2:8000/v1 --concurrency 32 --preset default
    aimo eval compare runs/amc-numina runs/amc-default
    aimo solve "What is 17 * 23?"

Every run setting is a flag under its own name (--temperature, --code-timeout-s, ...; see
`aimo eval --help`), as it is a notebook parameter and an AIMO_* variable (aimo_lib.config).
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, RunConfig, add_arguments
from .resolve import machine_probe, resolve


def _add_settings(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    add_arguments(p, skip=skip)
    p.add_argument("--no-early-stop", dest="early_stop", action="store_const", const="off",
                   help="let every sample finish (the same as --early-stop off; a replay of the "
                   "votes needs them all)")


def _config(args: argparse.Namespace, prog: str) -> RunConfig:
    try:
        return resolve(RunConfig.load(cli=vars(args)), machine_probe())
    except (ConfigError, ValueError) as exc:
        sys.exit(f"{prog}: {exc}")


def cmd_eval(argv: list[str]) -> None:
    from . import evaluation

    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(prog="aimo eval compare",
                                    description="per-set accuracy deltas of run B against run A"
                                    " with a paired bootstrap 95% confidence interval")
        p.add_argument("run_a")
        p.add_argument("run_b")
        p.add_argument("--resamples", type=int, default=2000)
        args = p.parse_args(argv[1:])
        rows = evaluation.compare_runs(args.run_a, args.run_b, args.resamples)
        print(f"{'dataset':<12}{'problems':>9}{'A':>8}{'B':>8}{'B - A':>9}   95% CI")
        for r in rows:
            lo, hi = r["ci95"]
            print(f"{r['dataset']:<12}{r['problems']:>9}{r['a']:>8.1%}{r['b']:>8.1%}"
                  f"{r['delta']:>+9.1%}   [{lo:+.1%}, {hi:+.1%}]")
        return
    p = argparse.ArgumentParser(prog="aimo eval", description=(
        "maj@N and pass@N over seeds on a validation set; resumable; writes config.json, "
        "samples.jsonl, summary.json, report.md and plots to --out. "
        "`aimo eval compare RUN_A RUN_B` compares two runs."))
    p.add_argument("--dataset", required=True, help="aime | amc | math4 | math5 | aimo1 | a "
                   ".jsonl/.csv path with problem and answer columns")
    p.add_argument("--data-dir", default=None, help="folder of the sets' JSONL copies "
                   "(default $AIMO_DATA_DIR; else the hub via `datasets`)")
    p.add_argument("--seeds", type=int, default=5, help="independent runs (seeds 0..S-1)")
    p.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<preset>)")
    p.add_argument("--concurrency", type=int, default=1, help="problems solved at once")
    p.add_argument("--no-progress", action="store_true")
    _add_settings(p, skip=("out_dir", "problems", "seed", "total_hours"))
    args = p.parse_args(argv)
    config = _config(args, "aimo eval")
    try:
        problems, skipped = evaluation.load_eval_dataset(args.dataset, args.data_dir,
                                                         config.limit)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        sys.exit(f"aimo eval: {exc}")
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    name = os.path.splitext(os.path.basename(args.dataset))[0]
    base = config.solver_config()  # per seed: the same with its seed
    out = args.out or os.path.join("runs", f"{name}-{base.name}")
    seeds = list(range(args.seeds))
    import time

    meta = {"dataset": args.dataset, "problems": len(problems), "skipped": skipped,
            "seeds": seeds, "run": config.to_dict(), "solver": base.to_dict(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with evaluation.eval_runner(config, out) as runner:
        summary = evaluation.run_eval(problems, runner, seeds, out, meta, args.concurrency,
                                      not args.no_progress)
    m, pn = summary["maj_at_n"], summary["pass_at_n"]
    print(f"{name}: maj@{summary['num_samples']} {m['mean']:.1%} ± {m['std']:.1%}, "
          f"pass@{summary['num_samples']} {pn['mean']:.1%} over seeds {seeds}; "
          f"report: {os.path.join(out, 'report.md')}")
    fallbacks = sum(summary["fallbacks"].values())
    if fallbacks:  # answers no sample gave: the model's score is not what they look like
        print(f"{fallbacks} of {fallbacks + summary['by_model']} answers are fallbacks, not the "
              "model's: " + "; ".join(f"{n}x {why}" for why, n in summary["fallbacks"].items()))


def cmd_solve(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="aimo solve", description="solve one problem, print the "
                                "answer, the votes and every trace")
    p.add_argument("problem")
    _add_settings(p, skip=("out_dir", "problems", "limit", "total_hours"))
    args = p.parse_args(argv)
    from .run import Runner

    with Runner(_config(args, "aimo solve")) as runner:
        outcome = runner.solve(args.problem, "cli")
    result = outcome.result
    for s in result.samples:
        print(f"--- sample {s.index}: {s.status}, answer {s.answer}\n{s.text}\n")
    print(f"answer: {outcome.answer} votes: {result.votes} ({result.elapsed_s:.1f} s)"
          + (f"\nfailed: {outcome.error}" if outcome.error else ""))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"eval": cmd_eval, "solve": cmd_solve}
    if not argv or argv[0] not in commands:
        print(__doc__.strip())
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
