"""What warming the weights into the page cache saves an engine's start from a cold cache.

    python -m bench.page_cache               # vLLM on the embedded SmolLM2, 3 rounds (~6 min)
    python -m bench.page_cache --engine hf --rounds 2

Arms, interleaved round by round (the same machine state for each): `cold` (the page cache
dropped, no warming: the baseline), `cold+warm` (dropped, then the weights read in the
background while the engine starts: aimo_lib.page_cache, what the notebook does) and `hot`
(nothing dropped: the floor). Dropping the cache needs root (`echo 3 >
/proc/sys/vm/drop_caches`); without it the bench says so and stops. Each start is timed from
EngineSpec.build() to an engine that has answered one token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from aimo_lib.engines import EngineSpec, GenerationParams
from aimo_lib.engines.cpu import cpu_summary
from aimo_lib.models import embedded_checkpoint
from aimo_lib.page_cache import weight_files

ARMS = ("cold", "cold+warm", "hot")


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def start_once(engine: str, model: str, arm: str) -> float:
    if arm != "hot":
        drop_caches()
    spec = EngineSpec(engine, model, warm_page_cache=arm == "cold+warm")
    start = time.monotonic()
    built = spec.build()
    try:
        built.generate(["1 + 1 ="], GenerationParams(max_tokens=1, temperature=0.0))
        return time.monotonic() - start
    finally:
        built.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="vllm", choices=("vllm", "hf"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows and the settings here")
    args = ap.parse_args()
    model = embedded_checkpoint()  # written once, not timed
    try:
        drop_caches()
    except OSError as exc:
        raise SystemExit(f"cannot drop the page cache ({exc}): run as root") from None
    size = sum(os.path.getsize(f) for f in weight_files(model)) / 2**20
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            times[arm].append(start_once(args.engine, model, arm))
            print(f"{arm:<10} {times[arm][-1]:6.1f} s", flush=True)
    base = statistics.median(times["cold"])
    print(f"\n{time.strftime('%Y-%m-%d')}, {cpu_summary()}, load {os.getloadavg()[0]:.1f}; "
          f"{args.engine} on the embedded SmolLM2 ({size:.0f} MiB of weights), "
          f"{args.rounds} rounds, median")
    print(f"{'arm':<11}{'start s':>9}{'vs cold':>9}   every round")
    for arm in ARMS:
        med = statistics.median(times[arm])
        print(f"{arm:<11}{med:>9.1f}{med / base:>9.2f}   "
              + ", ".join(f"{t:.1f}" for t in times[arm]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": vars(args), "model": model, "weights_mib": size,
                       "cpu": cpu_summary(), "seconds": times}, f, indent=2)


if __name__ == "__main__":
    main()
