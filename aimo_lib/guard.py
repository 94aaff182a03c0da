"""Never lose a problem: every adapter answers through these.

    guarded = GuardedSolve(solve, "aimo2", log_path="submission/results.jsonl")
    outcome = guarded(problem_text, problem_id)   # never raises; outcome.answer is valid

A Kaggle run is judged once, and an exception that escapes `predict` (or the AIMO 1 loop)
loses the whole submission. So whatever solve() does, raises or returns, the answer that goes
out is an integer in the competition's range: the solver's, or the fallback when it failed,
with the traceback written to the run's records and the log.

EngineHealth notices an engine that has died (a CUDA error poisons the process; a server
went away; a request hangs forever): after `max_failures` problems in a row on which the
engine gave nothing, later problems are answered with the fallback at once, loudly, instead
of each waiting out its whole time budget.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .competitions import get_competition
from .gateway import append_jsonl, validate_answer

__all__ = ["EngineHealth", "GuardedSolve", "Outcome", "log", "probe"]


def log(message: str) -> None:
    """The run's log line (stderr, flushed: Kaggle keeps it even when the kernel dies)."""
    print(f"[aimo] {message}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    answer: int  # always valid for the competition
    result: object = None  # what solve() returned (a SolveResult), if it returned
    error: str | None = None  # the traceback (or reason) when the fallback was used


class GuardedSolve:
    """solve(problem, problem_id) -> int | SolveResult, made safe: see the module docstring.

    log_path: a JSONL file (the run's results.jsonl) that gets a record for each failure.
    """

    def __init__(self, solve: Callable[[str, str], object], competition: str,
                 log_path: str | None = None):
        self.fallback = get_competition(competition).rules.fallback
        self.solve, self.competition, self.log_path = solve, competition, log_path

    def __call__(self, problem: str, problem_id: str = "") -> Outcome:
        start = time.monotonic()
        try:
            out = self.solve(problem, problem_id)
            answer = validate_answer(getattr(out, "answer", out), self.competition)
            return Outcome(answer, out)
        except Exception:  # noqa: BLE001 - anything (GatewayError too): the answer must go out
            error = traceback.format_exc()
        log(f"{problem_id}: solving failed; submitting the fallback answer {self.fallback}:\n"
            f"{error}")
        if self.log_path:
            try:
                os.makedirs(os.path.dirname(self.log_path) or ".", exist_ok=True)
                append_jsonl(self.log_path, {
                    "id": problem_id, "answer": self.fallback, "fallback": True,
                    "elapsed_s": round(time.monotonic() - start, 3), "error": error})
            except OSError as exc:  # a full disk must not cost the answer either
                log(f"could not record the failure in {self.log_path}: {exc}")
        return Outcome(self.fallback, None, error)


def probe(engine, timeout_s: float = 30.0) -> str | None:
    """Ask the engine for one token; None if it answers within `timeout_s`, else why not.
    Tells a hung engine from one whose steps are just longer than a problem's time limit."""
    from .engines import GenerationParams
    from .solver import _in_daemon_thread

    future = _in_daemon_thread(lambda: engine.generate(["1 + 1 ="], GenerationParams(
        max_tokens=1, temperature=0.0)))
    try:
        future.result(timeout=timeout_s)
        return None
    except Exception as exc:  # noqa: BLE001 - a timeout or any failure: the engine is unwell
        return f"a one-token probe failed: {type(exc).__name__}: {exc}" if str(exc) else (
            f"a one-token probe got no answer in {timeout_s:g} s ({type(exc).__name__})")


class EngineHealth:
    """Counts problems in a row on which the engine gave nothing (`SolveResult.engine_failed`,
    or an exception building or calling it); `dead` once there were `max_failures`."""

    def __init__(self, max_failures: int = 2):
        self.max_failures = max_failures
        self.in_a_row = 0
        self.reason = ""

    @property
    def dead(self) -> bool:
        return self.in_a_row >= self.max_failures

    def record(self, failed: bool, reason: str = "") -> None:
        was_dead = self.dead
        self.in_a_row = self.in_a_row + 1 if failed else 0
        if failed:
            self.reason = reason or self.reason
        if self.dead and not was_dead:
            log("!" * 72)
            log(f"THE ENGINE LOOKS DEAD: {self.in_a_row} problems in a row got nothing from it "
                f"({self.reason.strip().splitlines()[-1] if self.reason.strip() else 'no output'})"
                ". Every remaining problem is answered with the fallback at once.")
            log("!" * 72)
