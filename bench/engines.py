"""Generation engines on the embedded SmolLM2, same prompts, same run; HFEngine is the baseline.

    python -m bench.engines                  # throughput + time to first token (about 5 min)
    python -m bench.engines --demo           # also the README demo with each engine (~15 min)

Engines, one at a time (each is closed, and its processes checked gone, before the next loads):
  hf        HFEngine: transformers, fp32 (the product's CPU fallback, default batch size 8)
  offline   VLLMEngine: vLLM's offline engine, stepped by aimo_lib (bf16)
  async     VLLMEngine(async_mode=True): vLLM's AsyncLLM, one request per sample
  server    OpenAIEngine against `python -m vllm.entrypoints.openai.api_server` (VLLMServer)

throughput: 16 chat prompts (the sample problems) x 128 new tokens at temperature 0.8, fixed
seeds, all submitted at once: generated tokens / wall time. ttft: one request of one new token
on an idle engine (prompt processing + first step), median of 5 prompts. load: constructor to
ready (vLLM on CPU runs eagerly: no torch.compile).

--demo runs kaggle_notebook.ipynb headless on the 10 sample problems, exactly as
scripts/demo.sh does, with ENGINE=hf and then ENGINE=vllm, and compares wall times and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from aimo_lib.engines import GenerationParams, HFEngine, OpenAIEngine, VLLMEngine
from aimo_lib.kaggle.gateway import load_problems
from aimo_lib.models import embedded_checkpoint
from aimo_lib.reaper import cmdline, descendants
from bench._machine import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def prompts(n: int) -> list[str]:
    problems = [p.problem for p in load_problems("samples")]
    return [CHAT.format(problems[i % len(problems)]) for i in range(n)]


def measure(engine, batch: list[str], new_tokens: int) -> dict:
    params = [GenerationParams(max_tokens=new_tokens, temperature=0.8, seed=i)
              for i in range(len(batch))]
    engine.generate(batch[:1], GenerationParams(max_tokens=4))  # warm-up
    ttft = []
    for i in range(5):
        start = time.perf_counter()
        engine.generate([batch[i]], GenerationParams(max_tokens=1, temperature=0.0))
        ttft.append(time.perf_counter() - start)
    start = time.perf_counter()
    done = engine.generate(batch, params)
    wall = time.perf_counter() - start
    tokens = sum(c.num_tokens for c in done)
    return dict(tokens=tokens, wall_s=wall, tokens_per_s=tokens / wall,
                ttft_s=statistics.median(ttft))


def build(kind: str, checkpoint: str):
    if kind == "hf":
        return HFEngine(), None
    if kind == "offline":
        return VLLMEngine(checkpoint, max_model_len=4096), None
    if kind == "async":
        return VLLMEngine(checkpoint, max_model_len=4096, async_mode=True), None
    from aimo_lib.engines.server import VLLMServer

    server = VLLMServer(checkpoint, max_model_len=4096)
    return OpenAIEngine(server.url, max_concurrency=64), server


def bench_engines(kinds: list[str], n: int, new_tokens: int) -> list[dict]:
    checkpoint = embedded_checkpoint()
    batch = prompts(n)
    rows = []
    for kind in kinds:
        print(f"[bench] {kind}: loading", flush=True)
        start = time.perf_counter()
        engine, server = build(kind, checkpoint)
        load = time.perf_counter() - start
        try:
            row = dict(engine=kind, load_s=load, **measure(engine, batch, new_tokens))
        finally:
            engine.close()
            if server is not None:
                server.close()
        left = [p for p in descendants() if cmdline(p).startswith("VLLM")]
        if left:
            raise SystemExit(f"vLLM processes outlived {kind}'s close(): {left}")
        print(f"[bench] {kind}: {row}", flush=True)
        rows.append(row)
    return rows


def run_demo(engine: str, env: dict | None = None) -> tuple[float, str]:
    """The demo notebook on the sample problems (scripts/demo.sh's run) with ENGINE=engine,
    in `env` (default: this process's): its wall time and score."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "papermill", os.path.join(REPO, "kaggle_notebook.ipynb"),
             os.path.join(out, "executed.ipynb"), "-p", "PROBLEMS", "samples",
             "-p", "OUT_DIR", out, "-p", "ENGINE", engine], check=True, cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(out, "report.txt"), encoding="utf-8") as f:
            score = next((line.split("score:", 1)[1].strip() for line in f
                          if "score:" in line), "?")
    return wall, score


def bench_demo(engines: list[str]) -> list[dict]:
    rows = []
    for engine in engines:
        wall, score = run_demo(engine)
        print(f"[bench] demo with ENGINE={engine}: {wall:.0f} s, {score}", flush=True)
        rows.append(dict(engine=engine, wall_s=wall, score=score))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="hf,offline,async,server",
                    help="comma-separated, from hf, offline, async, server (hf is the baseline)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--demo", action="store_true", help="also the README demo, hf vs vllm")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    rows = bench_engines(args.engines.split(","), args.prompts, args.new_tokens)
    base = next((r for r in rows if r["engine"] == "hf"), rows[0])
    print(f"\n{machine()}; "
          f"{args.prompts} prompts x {args.new_tokens} new tokens\n")
    print("| engine | load s | tokens/s | vs hf | time to first token | vs hf |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['load_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['ttft_s'] * 1000:.0f} ms | "
              f"{base['ttft_s'] / r['ttft_s']:.2f}x |")
    demo = []
    if args.demo:
        demo = bench_demo(["hf", "vllm"])
        print("\n| demo engine | wall s | ratio | score |\n|---|---:|---:|---|")
        for r in demo:
            print(f"| {r['engine']} | {r['wall_s']:.0f} | "
                  f"{demo[0]['wall_s'] / r['wall_s']:.2f}x | {r['score']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(engines=rows, demo=demo, args=vars(args)), f, indent=1)


if __name__ == "__main__":
    main()
