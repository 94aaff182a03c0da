"""TIR data generation throughput against a local vLLM server: problems per minute, one
problem at a time (the baseline) against many in flight, same problems, same run.

    python -m bench.tir_data                   # about 5 minutes on 2 cores

The teacher is the embedded SmolLM2 behind `VLLMServer` (vLLM's OpenAI-compatible server),
reached through `OpenAIEngine`, as a real teacher would be; the problems are the toy recipe's
synthetic ones; every code block runs in the sandbox. What is measured is the pipeline
(requests in flight, the server's batching), not the teacher's quality.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from aimo_lib import SolverConfig
from aimo_lib.engines import OpenAIEngine
from aimo_lib.engines.server import VLLMServer
from aimo_lib.models import embedded_checkpoint
from aimo_lib.sandbox import Sandbox
from bench._machine import machine
from training.generate_tir_data import generate
from training.toy import synthetic_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    args = ap.parse_args()
    problems = synthetic_problems(args.problems, seed=3)
    config = SolverConfig.preset("default", num_samples=1, early_stop=None, max_rounds=2,
                                 max_new_tokens=args.max_new_tokens, competition="aimo3",
                                 prompt_template="chatml_tir_1shot")
    rows = []
    with VLLMServer(embedded_checkpoint(), max_model_len=4096) as server, \
            OpenAIEngine(server.url, max_concurrency=64) as engine, Sandbox() as sandbox:
        for concurrency in (1, args.concurrency):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                counts = generate(problems, engine, sandbox, os.path.join(tmp, "tir.jsonl"),
                                  attempts=1, config=config, progress=False,
                                  concurrency=concurrency)
                wall = time.perf_counter() - start
            rows.append((concurrency, wall, counts))
            print(f"[bench] concurrency {concurrency}: {wall:.1f} s, {counts}", flush=True)
    base = rows[0][1]
    print(f"\n{machine()}; "
          f"{args.problems} problems, 1 attempt, up to 2 code rounds of "
          f"{args.max_new_tokens} tokens\n")
    print("| problems in flight | wall s | problems / min | vs one at a time | kept |")
    print("|---:|---:|---:|---:|---:|")
    for concurrency, wall, counts in rows:
        print(f"| {concurrency} | {wall:.1f} | {60 * args.problems / wall:.1f} | "
              f"{base / wall:.2f}x | {counts['kept']} |")


if __name__ == "__main__":
    main()
