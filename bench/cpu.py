"""vLLM-CPU's settings on this machine: tokens/s and the demo's time for each, same run.

    python -m bench.cpu                  # engine settings x throughput (about 6 min on 2 cores)
    python -m bench.cpu --demo           # also the demo notebook for vllm_default vs ours

Each setting runs in a process of its own (vLLM reads its VLLM_CPU_* variables when it spawns
its engine), one after the other, on the embedded SmolLM2:

  vllm_default   vLLM's own choice: OpenMP threads bound to the physical cores, one core kept
                 for the engine-core process (VLLM_CPU_OMP_THREADS_BIND=auto, one reserved)
  ours           what aimo_lib sets on a machine of at most FEW_CORES cores: every core bound
                 to the worker, none reserved (aimo_lib.engines.cpu.vllm_cpu_env)
  ours_spinloop  ours + VLLM_USE_SPINLOOP_EXT=1 (vLLM's C spin-wait for its shared-memory queue)
  ours_kv1g      ours with a 1 GiB KV cache (VLLM_CPU_KVCACHE_SPACE=1) instead of 30% of RAM
  ours_iomp      ours with Intel's OpenMP preloaded (LD_PRELOAD, vLLM-CPU's documented setup:
                 its threads then sleep 5 ms after a parallel region instead of spinning)
  ours_iomp_tcmalloc  ours_iomp + tcmalloc (Debian's libtcmalloc-minimal4)
  ours_fp32      ours with the weights in float32 (dtype=float32)
  ours_bf16      ours with the weights in bfloat16 (dtype=bfloat16, the checkpoint's)
  ours_uni       ours with the worker inside the engine-core process (no second process to
                 hand each step to: distributed_executor_backend=uni)
  hf             the transformers engine (HFEngine, fp32, torch on every core) for comparison

Figures: batch = 16 chat prompts x 128 new tokens at temperature 0.8, all at once; single = one
prompt x 128 new tokens (one sample's sequential decoding, what sets a problem's time when
the rest have stopped); load = constructor to ready. vllm_default is the baseline of ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from aimo_lib.engines.cpu import FEW_CORES, cpu_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS: dict[str, str] = {}  # aimo_lib fills in what it sets
SETTINGS = {
    "vllm_default": {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
    "ours": _OURS,
    "ours_spinloop": {**_OURS, "VLLM_USE_SPINLOOP_EXT": "1"},
    "ours_kv1g": {**_OURS, "VLLM_CPU_KVCACHE_SPACE": "1"},
    "ours_iomp": {**_OURS},  # + LD_PRELOAD of Intel's OpenMP (vLLM's documented setup)
    "ours_iomp_tcmalloc": {**_OURS},  # + tcmalloc (Debian's libtcmalloc-minimal4)
    "ours_fp32": {**_OURS},  # + dtype float32 instead of the checkpoint's bfloat16
    "ours_bf16": {**_OURS},  # + dtype bfloat16 whatever aimo_lib would pick
    "ours_uni": {**_OURS},  # + the worker inside the engine-core process
    "hf": {},
}
_KWARGS = {"ours_fp32": {"dtype": "float32"}, "ours_bf16": {"dtype": "bfloat16"},
           "ours_uni": {"distributed_executor_backend": "uni"}}
IOMP = os.path.join(sys.prefix, "lib", "libiomp5.so")  # intel-openmp, pulled by vllm-cpu
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
_PRELOAD = {"ours_iomp": (IOMP,), "ours_iomp_tcmalloc": (TCMALLOC, IOMP)}
_VARS = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_USE_SPINLOOP_EXT",
         "VLLM_CPU_KVCACHE_SPACE", "LD_PRELOAD")


def env_for(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _VARS}
    env.update(SETTINGS[setting])
    if setting in _PRELOAD:
        missing = [p for p in _PRELOAD[setting] if not os.path.exists(p)]
        if missing:
            raise SystemExit(f"{setting} needs {missing} (apt-get install libtcmalloc-minimal4; "
                             "intel-openmp comes with vllm-cpu)")
        env["LD_PRELOAD"] = ":".join(_PRELOAD[setting])
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    return env


def child(setting: str, new_tokens: int) -> dict:
    """In the setting's own process: load, then the batch and the single-stream figures."""
    from aimo_lib.engines import GenerationParams, HFEngine, VLLMEngine
    from aimo_lib.models import embedded_checkpoint

    from .engines import prompts

    start = time.perf_counter()
    if setting == "hf":
        engine = HFEngine(batch_size=16)
    else:
        engine = VLLMEngine(embedded_checkpoint(), max_model_len=4096, async_mode=False,
                            **_KWARGS.get(setting, {}))
    load = time.perf_counter() - start
    try:
        batch = prompts(16)
        engine.generate(batch[:1], GenerationParams(max_tokens=4))  # warm-up
        rows = {}
        for name, chunk in (("batch", batch), ("single", batch[:1])):
            params = [GenerationParams(max_tokens=new_tokens, temperature=0.8, seed=i)
                      for i in range(len(chunk))]
            start = time.perf_counter()
            done = engine.generate(chunk, params)
            wall = time.perf_counter() - start
            rows[name] = sum(c.num_tokens for c in done) / wall
    finally:
        engine.close()
    return dict(setting=setting, load_s=load, batch_tps=rows["batch"],
                single_tps=rows["single"])


def run_setting(setting: str, new_tokens: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, "-m", "bench.cpu", "--child", setting, "--new-tokens",
           str(new_tokens), "--json", out]
    subprocess.run(cmd, check=True, env=env_for(setting), cwd=REPO)
    with open(out, encoding="utf-8") as f:
        row = json.load(f)
    os.unlink(out)
    print(f"[bench] {row}", flush=True)
    return row


def run_demo(setting: str) -> dict:
    """The demo notebook (scripts/demo.sh's run) under the setting; wall time and score."""
    from .engines import run_demo as notebook

    wall, score = notebook("hf" if setting == "hf" else "vllm", env_for(setting))
    print(f"[bench] demo {setting}: {wall:.0f} s, {score}", flush=True)
    return dict(setting=setting, wall_s=wall, score=score)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"comma-separated, from {', '.join(SETTINGS)}")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--demo", action="store_true",
                    help="also run the demo notebook for vllm_default and ours")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(child(args.child, args.new_tokens), f)
        return

    from aimo_lib.engines.cpu import vllm_cpu_env

    _OURS.update(vllm_cpu_env({}))
    if not _OURS:
        print(f"[bench] this machine has more than {FEW_CORES} cores: aimo_lib leaves vLLM's "
              "own binding, so 'ours' is vLLM's default here")
    rows = [run_setting(s, args.new_tokens) for s in args.settings.split(",")]
    base = next((r for r in rows if r["setting"] == "vllm_default"), rows[0])
    print(f"\n{cpu_summary()}; load: {os.getloadavg()[0]:.1f} (1-min average at the end); "
          f"{args.new_tokens} new tokens\n")
    print("| setting | variables | load s | batch tokens/s | ratio | single tokens/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        shown = " ".join(f"{k}={v}" for k, v in SETTINGS[r["setting"]].items()) or "-"
        shown += "".join(f" {k}={v}" for k, v in _KWARGS.get(r["setting"], {}).items())
        if r["setting"] in _PRELOAD:
            shown += " LD_PRELOAD=" + ":".join(map(os.path.basename, _PRELOAD[r["setting"]]))
        print(f"| {r['setting']} | {shown} | {r['load_s']:.1f} | {r['batch_tps']:.0f} | "
              f"{r['batch_tps'] / base['batch_tps']:.2f}x | {r['single_tps']:.1f} | "
              f"{r['single_tps'] / base['single_tps']:.2f}x |")
    demo = []
    if args.demo:
        demo = [run_demo(s) for s in ("vllm_default", "ours")]
        print("\n| demo under | wall s | ratio | score |\n|---|---:|---:|---|")
        for r in demo:
            print(f"| {r['setting']} | {r['wall_s']:.0f} | {demo[0]['wall_s'] / r['wall_s']:.2f}x"
                  f" | {r['score']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(cpu=cpu_summary(), settings=rows, demo=demo, args=vars(args)), f,
                      indent=1)


if __name__ == "__main__":
    main()
