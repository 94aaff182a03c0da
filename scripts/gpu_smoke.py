"""Smoke test of the GPU paths where a GPU exists: the real vLLM (or transformers on CUDA).

    python -m scripts.gpu_smoke --model /kaggle/input/numina-7b-tir-gptq   # vLLM, all GPUs
    python -m scripts.gpu_smoke --engine hf                                  # embedded SmolLM2
    python -m scripts.gpu_smoke --engine vllm --async-mode --model DIR

It loads the engine, generates a batch with the TIR stop string, runs the solver on two easy
problems with real code execution, and prints throughput. It exits non-zero when something
that should work does not (no GPU, no tokens, a malformed completion).
"""

from __future__ import annotations

import argparse
import sys
import time

from aimo_lib import Solver, SolverConfig
from aimo_lib.engines import GenerationParams, HFEngine, VLLMEngine
from aimo_lib.prompts import render_prompt
from aimo_lib.sandbox import Sandbox

PROBLEMS = [("What is 17 * 23?", 391), ("How many positive divisors does 36 have?", 9)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    ap.add_argument("--model", default=None, help="model dir or hub id (hf: default SmolLM2)")
    ap.add_argument("--async-mode", action="store_true", help="vLLM AsyncLLMEngine")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--template", default=None, help="prompt template (default per engine)")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("FAIL: no CUDA device visible")
        return 1
    print(f"GPUs: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
    start = time.perf_counter()
    if args.engine == "vllm":
        if not args.model:
            ap.error("--engine vllm needs --model")
        engine = VLLMEngine(args.model, async_mode=args.async_mode, max_model_len=4096)
        template = args.template or "numina"
    else:
        engine = HFEngine(args.model, device="cuda")
        template = args.template or "chatml_tir_1shot"
    print(f"engine loaded in {time.perf_counter() - start:.1f} s")

    params = GenerationParams(max_tokens=256, temperature=0.8, stop=("```output\n",), seed=0)
    prompt = render_prompt("numina", "What is 2+2?")
    start = time.perf_counter()
    outs = engine.generate([prompt] * 16, params)
    took = time.perf_counter() - start
    tokens = sum(o.num_tokens for o in outs)
    print(f"batch of 16: {tokens} tokens in {took:.2f} s = {tokens / took:.0f} tokens/s; "
          f"finish reasons {sorted({o.finish_reason for o in outs})}")
    if tokens == 0 or any(o.finish_reason == "stop" and not o.text.endswith("```output\n")
                          for o in outs):
        print("FAIL: empty or malformed completions")
        return 1

    cfg = SolverConfig.preset(args.preset, num_samples=args.samples, prompt_template=template,
                              max_new_tokens=512)
    with Sandbox() as sandbox:
        solver = Solver(engine, sandbox, cfg)
        for problem, truth in PROBLEMS:
            r = solver.solve(problem)
            calls = sum(len(s.code_calls) for s in r.samples)
            print(f"{problem!r}: answer {r.answer} (truth {truth}), votes {r.votes}, "
                  f"{r.tokens_generated} tokens, {calls} code calls, {r.elapsed_s:.1f} s")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
