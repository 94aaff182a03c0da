"""What a dead engine costs the run loop: the first load against a restart (close, then build
again: the weights come from the page cache), for each engine a run can rebuild.

    python -m bench.restart                 # vllm, vllm_server, hf on the embedded SmolLM2
    python -m bench.restart --engines hf    # one of them (about 1 minute)

Each engine is built, answers one request, and is then killed as a fault kills it (vLLM's
EngineCore or the server process SIGKILLed; transformers has no process to kill: closed),
after which the run loop (aimo_lib.run.Runner) notices on the next problem, probes, closes
and rebuilds it. The table: first load, restart (detection + close + build), their ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from aimo_lib.config import RunConfig
from aimo_lib.models import embedded_checkpoint
from aimo_lib.reaper import cmdline, descendants
from aimo_lib.run import Runner
from bench._machine import machine


def kill(runner: Runner, engine: str) -> None:
    if engine == "vllm":
        for pid in [p for p in descendants() if "EngineCore" in cmdline(p)]:
            os.kill(pid, signal.SIGKILL)
    elif engine == "vllm_server":
        runner._engine.server.proc.send_signal(signal.SIGKILL)
    else:  # transformers runs in this process: a closed engine stands for a dead one
        runner._engine.close()
        runner._engine.model = None


def measure(engine: str) -> dict:
    config = RunConfig.load(env={}, values=dict(
        engine=engine, model=embedded_checkpoint(), competition="aimo1", preset="default",
        num_samples=1, max_rounds=1, max_new_tokens=8, prompt_template="chatml_tir",
        early_stop="off", max_restarts=1))
    with Runner(config, restart_backoff_s=0.0) as runner:
        start = time.monotonic()
        runner.solve("What is 2 + 3?", "first")
        first = runner.load_s
        kill(runner, engine)
        start = time.monotonic()
        outcome = runner.solve("What is 4 + 5?", "after")
        after = time.monotonic() - start
        ok = runner.restarts == 1 and not outcome.failed
        return {"engine": engine, "load_s": first, "restart_s": runner.restart_s[0] if
                runner.restart_s else float("nan"), "problem_s": after, "ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="vllm,vllm_server,hf")
    args = ap.parse_args()
    embedded_checkpoint()  # written once, not timed
    rows = [measure(e) for e in args.engines.split(",")]
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine()}")
    print(f"{'engine':<13}{'first load s':>13}{'rebuild s':>11}{'problem with restart s':>24}"
          f"{'rebuild/load':>14}  ok")
    for r in rows:
        print(f"{r['engine']:<13}{r['load_s']:>13.1f}{r['restart_s']:>11.1f}"
              f"{r['problem_s']:>24.1f}{r['restart_s'] / r['load_s']:>14.2f}  {r['ok']}")


if __name__ == "__main__":
    main()
