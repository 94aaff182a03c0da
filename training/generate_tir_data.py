"""TIR training data with execution feedback (Numina's stage-2 data; their code was never
released).

    python -m training.generate_tir_data --problems problems.jsonl --out tir.jsonl \\
        --teacher-url https://api.openai.com/v1 --teacher-model gpt-4o --attempts 4
    python -m training.generate_tir_data ... --teacher-url http://127.0.0.1:8000/v1 \\
        --teacher-api completions --prompt-template chatml_tir     # a local vLLM server

A teacher behind any OpenAI-compatible endpoint (chat completions by default, as GPT-4o was
Numina's; or raw completions) writes ToRA-format solutions; every code block runs in aimo_lib's
sandbox and its real output is fed back, as a user turn in chat (this is aimo_lib's solver with
one sample). A solution is kept only if its final answer matches the reference; a wrong one is
re-sampled, up to --attempts times. Output: JSONL rows {"id", "messages", "attempts"} in
NuminaMath-TIR's format: the bare problem as the user turn (the teacher's instruction is not
part of the data), the whole ToRA solution, outputs included, as the assistant turn; a model
trained on it is served with its own chat template (prompt_template "model", aimo_lib's
default for checkpoints). Resumable: problems already in --out (or in <out>.rejected.jsonl)
are skipped.
"""

from __future__ import annotations

import argparse

from aimo_lib import SolverConfig
from aimo_lib.competitions import get_competition
from aimo_lib.config import RunConfig
from aimo_lib.evaluation import load_eval_dataset
from aimo_lib.records import Records
from aimo_lib.run import Runner


def generate(problems, engine, sandbox, out_path: str, attempts: int = 4,
             config: SolverConfig | None = None, competition: str = "aimo3",
             progress: bool = True, concurrency: int = 8) -> dict:
    """Returns counts: kept, rejected (wrong attempts), failed (problems with none kept),
    errors (attempts whose solving failed: recorded with the reason in the rejected file).
    `concurrency` problems are in flight at once (the engine batches their requests), through
    aimo_lib's run loop (each attempt guarded; an engine that stops answering is waited for);
    each is written as soon as it is done, so an interrupted run loses at most those in
    flight."""
    config = config or SolverConfig.preset("default", num_samples=1, early_stop=None,
                                           prompt_template="chatml_tir")
    rejected_path = out_path + ".rejected.jsonl"
    done = {key for path in (out_path, rejected_path) for key in Records(path).done()}
    rules = get_competition(competition).rules
    counts = {"kept": 0, "rejected": 0, "failed": 0, "skipped": 0, "errors": 0}
    todo = [p for p in problems if (p.id,) not in done]
    counts["skipped"] = len(problems) - len(todo)
    runner = Runner(RunConfig(competition=competition), engine=engine, sandbox=sandbox,
                    solver=config)

    def one(p) -> tuple[str, dict, int, int]:
        """(file, row, wrong attempts, errors) for one problem, attempts in turn."""
        error, wrong, errors = None, 0, 0
        for attempt in range(attempts):
            outcome = runner.solve(p.problem, p.id, seed=config.seed + attempt)
            if outcome.failed:  # the run loop logged why; the next attempt goes on
                error, errors = outcome.error, errors + 1
                continue
            sample = outcome.result.samples[0]
            if sample.answer is not None and sample.answer == rules.apply(p.answer):
                return out_path, {"id": p.id, "attempts": attempt + 1, "messages": [
                    {"role": "user", "content": p.problem},
                    {"role": "assistant", "content": sample.text}]}, wrong, errors
            wrong += 1
        return rejected_path, {"id": p.id, "attempts": attempts, "error": error}, wrong, errors

    for _, (path, row, wrong, errors) in runner.map(todo, concurrency, progress, "tir data",
                                                    fn=one):
        Records(path).append(row)  # only this thread writes
        counts["kept" if path == out_path else "failed"] += 1
        counts["rejected"] += wrong
        counts["errors"] += errors
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", required=True, help=".jsonl/.csv with id, problem, answer")
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher-url", required=True, help="OpenAI-compatible base URL")
    ap.add_argument("--teacher-model", default=None, help="default: the first the server lists")
    ap.add_argument("--teacher-api", choices=["chat", "completions"], default="chat",
                    help="chat: /v1/chat/completions (GPT-4o, any chat endpoint); completions: "
                    "/v1/completions with a text prompt template")
    ap.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    ap.add_argument("--attempts", type=int, default=4, help="samples per problem at most")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-rounds", type=int, default=4)
    ap.add_argument("--prompt-template", default=None,
                    help="what the teacher is shown (default: 'chat', the problem with the TIR "
                    "instruction, for --teacher-api chat; 'chatml_tir' for completions)")
    ap.add_argument("--competition", default="aimo3", help="answer rules for the match")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=16,
                    help="problems in flight at once (the teacher serves their requests together)")
    args = ap.parse_args()
    from aimo_lib.engines import OpenAIEngine
    from aimo_lib.sandbox import Sandbox

    problems, skipped = load_eval_dataset(args.problems, limit=args.limit)
    chat = args.teacher_api == "chat"
    # OpenAI's own API continues no partial assistant turn; vLLM's does (continue_partial)
    engine = OpenAIEngine(args.teacher_url, args.teacher_model, api=args.teacher_api,
                          api_key=args.api_key, max_concurrency=args.concurrency,
                          continue_partial="api.openai.com" not in args.teacher_url)
    template = args.prompt_template or ("chat" if chat else "chatml_tir")
    # A chat teacher writes its answer in one turn: no stop at the boxed answer's brace.
    config = SolverConfig.preset("default", num_samples=1, early_stop=None,
                                 temperature=args.temperature, max_rounds=args.max_rounds,
                                 prompt_template=template, competition=args.competition,
                                 stop_at_boxed=not chat)
    with Sandbox() as sandbox, engine:
        counts = generate(problems, engine, sandbox, args.out, args.attempts, config,
                          args.competition, concurrency=args.concurrency)
    print(f"{counts} ({len(skipped)} problems without an integer answer skipped)")


if __name__ == "__main__":
    main()
