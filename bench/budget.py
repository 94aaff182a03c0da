"""The time allocation schemes side by side: the per-problem limits an AIMO 3 run (5 hours, 50
problems) gets under each, on a fake clock (no model, a second to run).

    python -m bench.budget

Scenarios: every problem easy (done in 60 s), every problem hard (each uses its whole limit and
the solver's allowance), the hard half first, the hard half last. The model loads in 240 s.
"""

from __future__ import annotations

import statistics

from aimo_lib.budget import POLICIES, simulate

SCENARIOS = {
    "all easy": lambda i: 60.0,
    "all hard": lambda i: float("inf"),
    "hard first": lambda i: float("inf") if i < 25 else 60.0,
    "hard last": lambda i: 60.0 if i < 25 else float("inf"),
}


def main() -> None:
    print("| scenario | policy | first | min | median | max | hard problems' mean | run ends at "
          "(of 18000 s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, wants in SCENARIOS.items():
        for policy in POLICIES:
            limits, end, _ = simulate(policy, wants)
            hard = [x for i, x in enumerate(limits) if wants(i) == float("inf")]
            print(f"| {name} | {policy} | {limits[0]:.0f} | {min(limits):.0f} | "
                  f"{statistics.median(limits):.0f} | {max(limits):.0f} | "
                  f"{statistics.mean(hard) if hard else 0:.0f} | {end:.0f} |")


if __name__ == "__main__":
    main()
