"""Time budgeting for a whole competition run.

    budget = TimeBudget.for_competition("aimo1")         # 9 h, 50 problems, start-up margin
    for problem in problems:
        limit = budget.next_limit_s()                      # pass as solve(..., time_limit_s=)
        result = solver.solve(problem, time_limit_s=limit)
        budget.record(result.elapsed_s)

Every problem gets a base share, (total - startup - reserve) / n: `startup_s` is what loading
the model may take before the first problem, `reserve_s` is kept back for the end (writing the
submission, a margin). Time a problem leaves unused goes into
a bank, and a later problem may draw up to `max_draw_s` from it (NeMo-Skills' AIMO-2 scheme:
350 s + up to 210 s). Whatever the order and difficulty, a limit never exceeds what is left
of the run minus the problems still to come's floor and the solver's lateness allowance, so a
run that honours its limits never exceeds its total. The clock is the wall clock from
construction (model loading included), not just the sum of the recorded times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .competitions import get_competition

__all__ = ["ALLOWANCE_S", "POLICIES", "TimeBudget", "simulate"]

# TimeBudget.for_run's per-problem schemes.
POLICIES = {
    "banked": "the AIMO 2 winner's: a base share plus up to 60% of it from the bank",
    "reserve": "the AIMO 3 top notebooks': all but 300 s for each problem to come, 300-900 s",
}

# How late Solver.solve() may return after its time limit: the wind-down (aborting requests,
# the grace given to an engine that stops at the deadline by itself, reaping a cut code
# block). A budget shortens every limit by more than this (TimeBudget.lateness_s), the rest
# covering the run loop's own work after a problem (its records, a health probe's start).
ALLOWANCE_S = 2.0


class TimeBudget:
    """Per-problem deadlines for a run of `n_problems` within `total_s` seconds.

    startup_s: allowed for start-up before the first problem (unused start-up time goes into
    the bank). reserve_s: never handed out. max_draw_s: the most one problem may take from the
    bank (None: no limit).
    max_per_problem_s: a hard cap for any problem. min_per_problem_s: the floor reserved for
    each problem still to come. lateness_s: how late a solver may return after its limit
    (cancellation, a last code execution); limits are shortened by it.
    """

    def __init__(self, total_s: float, n_problems: int, *, startup_s: float = 0.0,
                 reserve_s: float = 0.0,
                 max_draw_s: float | None = None, max_per_problem_s: float | None = None,
                 min_per_problem_s: float = 1.0, lateness_s: float = ALLOWANCE_S + 3.0,
                 keep_per_problem_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if total_s <= startup_s + reserve_s or n_problems < 1:
            raise ValueError("need total_s > startup_s + reserve_s and n_problems >= 1")
        self.total_s, self.n_problems = total_s, n_problems
        self.startup_s, self.reserve_s = startup_s, reserve_s
        self.max_draw_s, self.max_per_problem_s = max_draw_s, max_per_problem_s
        self.min_per_problem_s, self.lateness_s = min_per_problem_s, lateness_s
        self.keep_per_problem_s = keep_per_problem_s
        self.base_s = (total_s - startup_s - reserve_s) / n_problems
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self.done = 0
        self.recorded_s = 0.0

    @classmethod
    def for_run(cls, competition: str, total_hours: float | None = None,
                n_problems: int | None = None, policy: str = "banked") -> TimeBudget:
        """The notebook's budget: the competition's hours (or `total_hours`), a tenth of it
        (at most 10 min) for start-up, a twentieth (at most 5 min) in reserve, and the
        per-problem limits of `policy` (POLICIES): "banked", a base share plus up to 60% of it
        drawn from the bank (the AIMO 2 winner's, NeMo-Skills: 350 s + up to 210 s); "reserve",
        everything but 300 s kept for each problem still to come, from 300 s (a floor) to 900 s
        (the AIMO 3 top notebooks'; the 5th place settled on 900/300). The reserve scheme's
        seconds scale with the run's share per problem where the run is shorter than 300 s a
        problem (a local test). n_problems: the problems actually served when known, else the
        competition's 50; resize() corrects it later."""
        if policy not in POLICIES:
            raise ValueError(f"unknown time policy {policy!r}; choose from {', '.join(POLICIES)}")
        c = get_competition(competition)
        total = total_hours * 3600 if total_hours else c.total_s
        n = n_problems or c.problems
        startup, reserve = min(600.0, total / 10), min(300.0, total / 20)
        if policy == "reserve":
            keep = min(300.0, (total - startup - reserve) / n)
            budget = cls(total, n, startup_s=startup, reserve_s=reserve, keep_per_problem_s=keep,
                         min_per_problem_s=keep, max_per_problem_s=3 * keep)
        else:
            budget = cls(total, n, startup_s=startup, reserve_s=reserve)
            budget.draw_share = 0.6
        budget.policy = policy
        budget.resize(budget.n_problems)
        return budget

    policy = "banked"

    draw_share: float | None = None  # max_draw_s as a share of base_s, kept on resize()

    def resize(self, n_problems: int) -> None:
        """The run serves `n_problems` in all (those done included): shares are recomputed
        from what is left, so problems after the 50th of a longer file still get time."""
        if n_problems < 1:
            raise ValueError("n_problems must be >= 1")
        with self._lock:
            self.n_problems = max(n_problems, self.done)
            self.base_s = (self.total_s - self.startup_s - self.reserve_s) / self.n_problems
            if self.draw_share is not None:
                self.max_draw_s = self.draw_share * self.base_s
            if self.policy == "reserve":
                keep = min(300.0, self.base_s)
                self.keep_per_problem_s = self.min_per_problem_s = keep
                self.max_per_problem_s = 3 * keep

    @classmethod
    def for_competition(cls, name: str, *, startup_s: float = 600.0, reserve_s: float = 300.0,
                        **kwargs) -> TimeBudget:
        """The competition's total time and problem count; 10 min for start-up, 5 in reserve."""
        c = get_competition(name)
        return cls(c.total_s, c.problems, startup_s=startup_s, reserve_s=reserve_s, **kwargs)

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._start

    @property
    def bank_s(self) -> float:
        """Time earlier problems left unused (negative if start-up or overruns ate into it)."""
        return self.startup_s + self.done * self.base_s - self.elapsed_s

    def next_limit_s(self) -> float:
        """Seconds the next problem may use (0.0 once the run is out of time or problems)."""
        with self._lock:
            left = self.n_problems - self.done
            if left <= 0:
                return 0.0
            remaining = self.total_s - self.reserve_s - self.elapsed_s
            if self.keep_per_problem_s is not None:  # "reserve": all but what the rest keep
                limit = max(remaining - (left - 1) * self.keep_per_problem_s,
                            self.min_per_problem_s)
            else:  # "banked": a base share and a draw on what earlier problems left
                limit = self.base_s + min(self.bank_s, self.max_draw_s
                                          if self.max_draw_s is not None else float("inf"))
            if self.max_per_problem_s is not None:
                limit = min(limit, self.max_per_problem_s)
            # Never eat the floor of the problems still to come, or the lateness allowance.
            limit = min(limit, remaining - (left - 1) * self.min_per_problem_s)
            return max(0.0, limit - self.lateness_s)

    def record(self, elapsed_s: float) -> None:
        """Record that a problem finished after `elapsed_s` seconds."""
        with self._lock:
            self.done += 1
            self.recorded_s += elapsed_s

    def __repr__(self) -> str:
        return (f"TimeBudget(done={self.done}/{self.n_problems}, elapsed={self.elapsed_s:.0f}s"
                f" of {self.total_s:.0f}s, base={self.base_s:.0f}s, bank={self.bank_s:.0f}s)")


def simulate(policy: str, wants: Callable[[int], float], *, competition: str = "aimo3",
             hours: float | None = None, n: int | None = None, startup_s: float = 240.0
             ) -> tuple[list[float], float, TimeBudget]:
    """The limits a run hands out, on a fake clock: the model loads in `startup_s`, problem i
    takes wants(i) seconds, at most its limit plus ALLOWANCE_S (the latest a solve returns).
    Returns the limits, the run's end and the budget (bench/budget.py, tests/test_aimo3.py)."""
    now = [0.0]
    budget = TimeBudget.for_run(competition, hours, n, policy=policy)
    budget._clock, budget._start = (lambda: now[0]), 0.0
    now[0] += startup_s
    limits = []
    for i in range(budget.n_problems):
        limit = budget.next_limit_s()
        took = min(wants(i), limit + ALLOWANCE_S)
        limits.append(limit)
        now[0] += took
        budget.record(took)
    return limits, now[0], budget
