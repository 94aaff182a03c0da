"""The run loop: every problem of every run (the notebook's gateways, `aimo eval`, KTO sampling,
TIR data generation) goes through one `Runner`.

    runner = Runner(config, budget=TimeBudget.for_run("aimo3"))  # the model loads later
    outcome = runner.solve(problem, problem_id)   # never raises; outcome.answer is valid
    for job, outcome in runner.map(jobs, concurrency=4): ...     # many problems at once
    runner.close()                                # the engine's processes and the sandbox

For each problem, in order:

1. the budget gives its time limit (a TimeBudget for a competition run, else the fixed
   `time_limit_s`, else none);
2. health: an engine that gave nothing on an earlier problem is asked for one token first;
   one that answers is used (a problem's own fault, such as a prompt over the context, is no
   engine's), one that does not is restarted;
3. the solve is guarded: whatever building the engine or solving does, an answer valid for the
   competition comes out (the fallback, flagged, with the reason in the records and the log).
   That covers BaseExceptions too (SystemExit, asyncio.CancelledError from an engine's event
   loop, in either pipeline); only KeyboardInterrupt goes through, so that Ctrl-C stops a run;
4. restart: an engine that died during the problem (its process killed, EngineDeadError, a
   server that stopped answering, a hang) is closed, with every process it started, and built
   again; the restart's time counts against the budget; at most `max_restarts` in a run, with
   backoff, and none when the budget left cannot cover a load; a server this process did not
   start is waited for and probed instead. The problem in flight is tried again when its time
   allows. A close that does not return within `close_timeout_s` (a sync vLLM shutdown, a
   server stuck in the GPU driver) abandons that engine: the processes its build started are
   killed and the next one is built. The close runs on a thread of its own that holds none of
   the runner's locks; a restart waits for it at most that long (a new engine beside one that
   still holds the GPU would not load), Runner.close() not under the lock at all;
5. its record is appended to the run's JSONL file (a write that fails is logged: it never
   costs the answer);
6. resume: `done()` gives the keys already recorded, which a rerun skips.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .budget import TimeBudget
from .competitions import get_competition, validate_answer
from .config import RunConfig
from .engines import Engine, GenerationParams, as_engine
from .pools import in_daemon_thread
from .presets import SolverConfig
from .reaper import Reaper
from .records import Records, log
from .resolve import machine_probe, resolve
from .results import Sample, SolveResult

__all__ = ["Job", "Outcome", "Runner", "log", "probe"]

_RETRY_MIN_S = 20.0  # a problem whose engine died is tried again if this much time is left
# An engine's close() gets this long before it is abandoned: vLLM's own shutdown waits up to
# 60 s for its engine core, then 10 s for its loop; a server gets 10 s after SIGTERM.
_CLOSE_TIMEOUT_S = 120.0
_SANDBOX_WORKER = "aimo_lib._sandbox_worker"  # the sandbox's processes: never an engine's


@dataclass
class Outcome:
    """What went out for one problem: `answer` is always valid for the competition."""

    answer: int
    result: SolveResult  # the solver's, or a flagged fallback result (no samples)
    error: str | None = None  # why the answer is the fallback, when solving failed
    restarts: int = 0  # engine restarts during this problem

    @property
    def failed(self) -> bool:
        """Solving broke down (not just: no sample gave an answer); a rerun redoes it."""
        return self.error is not None


@dataclass
class Job:
    """One problem for Runner.map: `key` identifies its record (resume skips done keys)."""

    problem: str
    id: str
    seed: int | None = None
    record: dict = field(default_factory=dict)  # more fields for its record (e.g. "truth")

    @property
    def key(self) -> tuple:
        return (self.id,) if self.seed is None else (self.id, self.seed)


def probe(engine: Engine, timeout_s: float = 30.0) -> str | None:
    """Ask the engine for one token; None if it answers within `timeout_s`, else why not.
    Tells a hung or dead engine from one whose steps are just longer than a time limit."""
    future = in_daemon_thread(lambda: engine.generate(["1 + 1 ="], GenerationParams(
        max_tokens=1, temperature=0.0)))
    try:
        out = future.result(timeout=timeout_s)
        if not isinstance(out, list) or len(out) != 1:
            return f"a one-token probe got {type(out).__name__} back, not one completion"
        return None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a timeout or any failure: the engine is unwell
        return f"a one-token probe failed: {type(exc).__name__}: {exc}" if str(exc) else (
            f"a one-token probe got no answer in {timeout_s:g} s ({type(exc).__name__})")


class Runner:
    """Solves a run's problems on one engine that it keeps alive; see the module docstring.

    config: the run's RunConfig (resolved here with machine_probe() if it is not yet).
    engine: None (built from config.engine, and rebuilt when it dies), a function building
    one (called again to rebuild), or an engine (never rebuilt: waited for and probed).
    budget: the run's TimeBudget, or None (config.time_limit_s per problem, if set).
    records: a JSONL path for one record per problem (None: no records).
    solver: the SolverConfig to use instead of config.solver_config() (each problem's seed
    still replaces its seed when given).
    solve_fn: replaces the solver (tests, or any solve(problem, id, limit) -> int |
    SolveResult); the answer still goes through the guard.
    close_timeout_s: how long an engine's close() may take before the engine is abandoned
    (its processes killed) and the run goes on.
    """

    def __init__(self, config: RunConfig, *, engine: Engine | Callable[[], Engine] | None = None,
                 sandbox=None, budget: TimeBudget | None = None, records: str | None = None,
                 solver: SolverConfig | None = None,
                 solve_fn: Callable[[str, str, float | None], Any] | None = None,
                 probe_timeout_s: float = 30.0, restart_backoff_s: float = 5.0,
                 remote_wait_s: float = 300.0, close_timeout_s: float = _CLOSE_TIMEOUT_S):
        config = resolve(config, machine_probe())  # a resolved config comes back as it is
        self.config, self.budget = config, budget
        self.competition = config.competition
        self.rules = get_competition(self.competition).rules
        self.records = Records(records)
        self.solve_fn, self.solver_config = solve_fn, solver
        self.probe_timeout_s, self.restart_backoff_s = probe_timeout_s, restart_backoff_s
        self.remote_wait_s, self.close_timeout_s = remote_wait_s, close_timeout_s
        if engine is None:
            self._build: Callable[[], Engine] | None = config.engine.build
            self.remote = config.engine.remote
        elif callable(engine) and not hasattr(engine, "generate"):
            self._build, self.remote = engine, False
        else:
            self._build, self.remote = None, True  # an engine we did not make: wait for it
        self._engine: Engine | None = None if self._build else as_engine(engine)
        self._procs: Reaper | None = None  # the processes the current engine's build started
        self._sandbox, self._own_sandbox = sandbox, sandbox is None
        self._lock = threading.RLock()  # the engine's life: build, probe, restart
        self._solve_lock = threading.Lock()  # budgeted runs serve one problem at a time
        self._generation = 0  # +1 per engine built: a failure on an old one needs no restart
        self._solvers: dict[tuple, Any] = {}
        self.suspect: str | None = None  # why the engine may be dead (checked before the next)
        self.gave_up: str | None = None  # no engine can be had: later problems get the fallback
        self.restarts = 0  # in the whole run
        self.in_a_row = 0  # restarts since an engine last answered a problem (max_restarts)
        self.load_s: float | None = None  # how long the first build took
        self.restart_s: list[float] = []

    # ------------------------------------------------------------ one problem

    def solve(self, problem: str, problem_id: str = "", *, seed: int | None = None,
              record: dict | None = None) -> Outcome:
        """Solve one problem under the run's rules; never raises but KeyboardInterrupt (see
        the module docstring)."""
        try:
            if self.budget is None:
                return self._solve(problem, problem_id, seed, record or {})
            with self._solve_lock:  # a budget's limits are handed out one problem at a time
                return self._solve(problem, problem_id, seed, record or {})
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - a bug in the bookkeeping: the answer still goes out
            return self._outcome(problem, None, traceback.format_exc(), 0.0)

    def _solve(self, problem: str, problem_id: str, seed: int | None, extra: dict) -> Outcome:
        start = time.monotonic()
        limit = self.budget.next_limit_s() if self.budget is not None else (
            self.config.time_limit_s)
        restarts_before = self.restarts
        result, error = None, None
        for attempt in (1, 2):  # the second: after a restart, when the problem's time allows
            left = None if limit is None else limit - (time.monotonic() - start)
            result, error, generation = self._attempt(problem, problem_id, seed, left)
            if not self._engine_failed(result, error):
                self.suspect, self.in_a_row = None, 0  # it works: a later death is new
                break
            why = self._why(result, error)
            state = self._recover(generation, why, problem_id)
            if state == "kept":  # the engine answers: the problem's own fault
                break
            left = None if limit is None else limit - (time.monotonic() - start)
            if state == "dead" or attempt == 2 or (left is not None and left < min(
                    _RETRY_MIN_S, 0.25 * limit)):
                error = error or f"the engine gave nothing ({why})"
                break
            log(f"{problem_id}: trying it again on the new engine ({_secs(left)} left)")
        elapsed = time.monotonic() - start
        outcome = self._outcome(problem, result, error, elapsed)
        outcome.restarts = self.restarts - restarts_before
        if self.budget is not None:
            self.budget.record(elapsed)
        self.records.append({"id": problem_id, **({"seed": seed} if seed is not None else {}),
                             **extra, "answer": outcome.answer, "failed": outcome.failed,
                             "error": outcome.error, "restarts": outcome.restarts,
                             "result": outcome.result.to_dict()})
        log(f"{problem_id}: answer {outcome.answer} votes {dict(outcome.result.votes)} in "
            f"{elapsed:.1f} s (limit {_secs(limit)})"
            + (f"; {self.budget}" if self.budget is not None else ""))
        return outcome

    def _attempt(self, problem, problem_id, seed, limit) -> tuple[Any, str | None, int]:
        """(what solve returned, or None; the error that stopped it; the engine generation)."""
        generation = self._generation
        if limit is not None and limit <= 0:
            return None, "not attempted: the run's time is spent", generation
        try:
            if self.solve_fn is not None:
                return self.solve_fn(problem, problem_id, limit), None, generation
            solver, generation = self._solver(seed)
            if solver is None:
                return None, f"not attempted: no engine ({self.gave_up})", generation
            return solver.solve(problem, time_limit_s=limit), None, generation
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - building the engine or solving failed
            return None, traceback.format_exc(), generation

    def _outcome(self, problem: str, out, error: str | None, elapsed: float) -> Outcome:
        """The answer that goes out: the solver's when valid, else the flagged fallback."""
        fallback = self.rules.fallback
        if error is None:
            try:
                answer = validate_answer(getattr(out, "answer", out), self.competition)
                if isinstance(out, SolveResult):
                    return Outcome(answer, out)
                # solve_fn's own answer: one sample that gave it, so that its record reads
                # back as the model's (results.model_answer), as a solver's would
                return Outcome(answer, SolveResult(problem, answer, {answer: 1.0}, False, False,
                                                   [Sample(0, status="answered", answer=answer)],
                                                   0, elapsed))
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - anything (GatewayError too): an answer goes out
                error = traceback.format_exc()
        log(f"solving failed; submitting the fallback answer {fallback}:\n{error.rstrip()}")
        return Outcome(fallback, SolveResult(problem, fallback, {}, True, False, [], 0, elapsed,
                                             error=error), error)

    # ------------------------------------------------------------ the engine's health

    @staticmethod
    def _engine_failed(result, error: str | None) -> bool:
        """The engine gave nothing: every request failed, or none completed before the
        deadline (maybe hung), or it could not be built."""
        if error is not None:
            return not error.startswith("not attempted: the run's time")
        if not isinstance(result, SolveResult):
            return False
        return result.engine_failed or result.nothing_back

    @staticmethod
    def _why(result, error: str | None) -> str:
        if error:
            return error.strip().splitlines()[-1]
        first = next((s.error for s in result.samples if s.error), None)
        return first or ("no request completed before the deadline" if result.nothing_back
                         else "every request failed")

    def _solver(self, seed: int | None):
        """The solver for this seed on the current engine (built at the first call), and the
        engine's generation; (None, gen) when no engine can be had."""
        with self._lock:
            if self.suspect is not None and self._engine is not None:
                why = probe(self._engine, self.probe_timeout_s)
                if why is None:
                    log(f"the engine answers again (it had failed: {self.suspect}); using it")
                    self.suspect = None
                else:
                    self._restart(self._generation, why)
            if self._engine is None and self.gave_up is None:
                self._first_build()
            if self._engine is None:
                return None, self._generation
            key = (self._generation, seed)
            if key not in self._solvers:
                from .sandbox import Sandbox
                from .solver import Solver

                cfg = (self.config.solver_config(seed) if self.solver_config is None else
                       self.solver_config if seed is None else
                       replace(self.solver_config, seed=seed))
                if self._sandbox is None:
                    self._sandbox = Sandbox(max_output_chars=max(2000, cfg.max_output_chars))
                self._solvers[key] = Solver(self._engine, self._sandbox, cfg)
            return self._solvers[key], self._generation

    def _new_engine(self) -> Engine:
        """Build an engine, noting the processes its build starts: they are killed if its
        close() is ever abandoned (and those of a build that fails, at once)."""
        from .reaper import cmdline, descendants, spawned_since

        before = descendants()
        engine = None
        try:
            engine = as_engine(self._build())
        finally:
            started = spawned_since(before)
            for pid in [p for p in started if _SANDBOX_WORKER in cmdline(p)]:
                started -= {pid, *descendants(pid)}  # the sandbox's, started meanwhile
            procs = Reaper(started, watch=False)  # vLLM and servers keep their own watchdog
            if engine is None:
                procs.stop()
        self._procs = procs
        return engine

    def _first_build(self) -> None:
        start = time.monotonic()
        try:
            self._engine = self._new_engine()
        except FileNotFoundError as exc:  # no model to load: building again will not help
            self._give_up(f"{type(exc).__name__}: {exc}")
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - counted as a restart, retried with backoff
            log(f"building the engine failed: {type(exc).__name__}: {exc}")
            self._restart(self._generation, f"{type(exc).__name__}: {exc}")
            return
        self.load_s = time.monotonic() - start
        self._generation += 1
        log(f"model and sandbox ready in {self.load_s:.0f} s")
        self._record_engine_settings()

    def _record_engine_settings(self) -> None:
        """config.json (beside the records) gets the settings the engine runs with, as read
        back from the engine itself (what a preset or a device adaptation made of the input)."""
        settings = getattr(self._engine, "settings", None)
        if not self.records.path or not isinstance(settings, dict):
            return
        path = os.path.join(os.path.dirname(os.path.abspath(self.records.path)), "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["engine_settings"] = {"read_back_from": type(self._engine).__name__,
                                         **settings}
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, default=str)
            os.replace(path + ".tmp", path)
        except (OSError, ValueError, AttributeError) as exc:
            log(f"config.json: the engine's settings were not recorded ({exc})")

    def _recover(self, generation: int, why: str, problem_id: str) -> str:
        """After a problem the engine gave nothing on: "kept" (it answers a probe: the
        problem's fault), "restarted" (a new or recovered engine is ready for another try)
        or "dead"."""
        with self._lock:
            if generation != self._generation:  # another problem restarted it already
                return "restarted" if self._engine is not None else "dead"
            if self._engine is None:
                return "dead"
            answer = probe(self._engine, self.probe_timeout_s)
            if answer is None:
                log(f"{problem_id}: the engine gave nothing ({why}) but answers a probe: it "
                    "is kept")
                return "kept"
            self.suspect = why
            return "restarted" if self._restart(generation, f"{why}; {answer}") else "dead"

    def _restart(self, generation: int, why: str) -> bool:
        """Close the engine and build it again (see the module docstring); True if built."""
        with self._lock:
            if generation != self._generation:
                return self._engine is not None
            log("!" * 72)
            log(f"THE ENGINE LOOKS DEAD: {why}")
            if self._build is None or self.remote:
                return self._wait_for_remote(why)
            while self.in_a_row < self.config.max_restarts:
                left = self._budget_left()
                backoff = self.restart_backoff_s * 2 ** self.in_a_row
                need = 1.5 * (self.load_s or 0.0) + backoff
                if left is not None and left < need:
                    return self._give_up(f"{left:.0f} s of the run's budget is left, less than "
                                         f"a restart takes ({need:.0f} s)")
                self.restarts, self.in_a_row = self.restarts + 1, self.in_a_row + 1
                time.sleep(backoff)
                self._close_engine()
                start = time.monotonic()
                try:
                    engine = self._new_engine()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - try again, up to max_restarts
                    why = f"{type(exc).__name__}: {exc}"
                    log(f"restart {self.in_a_row} of {self.config.max_restarts} failed: {why}")
                    continue
                took = time.monotonic() - start
                self.restart_s.append(took)
                self.load_s = self.load_s or took
                self._engine, self._generation = engine, self._generation + 1
                self.suspect = None
                log(f"engine restarted in {took:.0f} s (restart {self.in_a_row} of "
                    f"{self.config.max_restarts} in a row, {self.restarts} in the run); the run "
                    "goes on" + (f"; {self.budget}" if self.budget is not None else ""))
                log("!" * 72)
                return True
            return self._give_up(f"{self.config.max_restarts} restarts in a row spent; the "
                                 f"last failure: {why}")

    def _wait_for_remote(self, why: str) -> bool:
        """A server this process did not start: rebuild the client (if we can) and probe it
        until it answers, for at most remote_wait_s (and the budget left)."""
        end = time.monotonic() + min(self.remote_wait_s, self._budget_left() or float("inf"))
        delay = max(0.5, self.restart_backoff_s)
        while time.monotonic() < end:
            try:
                if self._build is not None:
                    self._close_engine()
                    self._engine = self._new_engine()
                if self._engine is not None and probe(self._engine, self.probe_timeout_s) is None:
                    self._generation += 1
                    self.suspect = None
                    log("the server answers again; the run goes on")
                    return True
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - not up yet
                log(f"the server is not back yet: {type(exc).__name__}: {exc}")
            time.sleep(min(delay, max(0.0, end - time.monotonic())))
            delay = min(2 * delay, 60.0)
        self.suspect = why  # probed again before the next problem: never given up for good
        log(f"the server did not answer for {self.remote_wait_s:.0f} s; this problem gets the "
            "fallback, the next one asks again")
        return False

    def _give_up(self, why: str) -> bool:
        self._close_engine()
        self.gave_up = why
        log(f"NO ENGINE: {why}. The remaining problems are answered with the fallback at once.")
        log("!" * 72)
        return False

    def _budget_left(self) -> float | None:
        if self.budget is None:
            return None
        return self.budget.total_s - self.budget.reserve_s - self.budget.elapsed_s

    def _close_engine(self) -> None:
        self._shut(*self._detach())

    def _detach(self) -> tuple[Engine | None, Reaper | None]:
        """Take the engine (and its processes) out of use; the caller shuts them."""
        engine, procs = self._engine, self._procs
        self._engine = self._procs = None
        self._solvers.clear()
        return engine, procs

    def _shut(self, engine: Engine | None, procs: Reaper | None) -> None:
        """Close an engine within close_timeout_s, then kill what its build started that is
        still running. Its close() runs on a thread of its own: one that never returns
        (blocked in a driver, a shutdown waiting on a dead core) is abandoned there."""
        from concurrent.futures import TimeoutError as FuturesTimeout


        if engine is not None:
            future = in_daemon_thread(engine.close, name="engine-close")
            try:
                future.result(timeout=self.close_timeout_s)
            except FuturesTimeout:
                alive = len(procs.alive()) if procs is not None else 0
                log(f"closing the engine did not return in {self.close_timeout_s:g} s: it is "
                    f"abandoned, and the {alive} processes its build started are killed")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a dead engine may fail to close
                log(f"closing the dead engine: {type(exc).__name__}: {exc}")
        if procs is not None:
            procs.stop()  # what a clean close leaves is gone already: this costs nothing

    def set_competition(self, competition: str) -> None:
        """Serve another competition's rules (and budget) than configured: the API present
        is another one's (kaggle.serve says so loudly)."""
        with self._lock:
            self.config = replace(self.config, competition=competition)
            self.competition, self.rules = competition, get_competition(competition).rules
            self._solvers.clear()
            if self.budget is not None:
                self.budget = TimeBudget.for_run(competition, self.config.total_hours)

    # ------------------------------------------------------------ many problems

    def expect(self, n_problems: int) -> None:
        """The run serves `n_problems` in all: size the budget's shares for them."""
        if self.budget is not None:
            self.budget.resize(n_problems)

    def done(self) -> set[tuple]:
        """Keys (id, or id and seed) already recorded without failing: a rerun skips them.
        A malformed record is skipped (logged with its line number): its problem is redone."""
        keys = self.records.done(("id", "seed"))
        return {(i,) for i, _ in keys} | {k for k in keys if k[1] is not None}

    def map(self, jobs: Iterable, concurrency: int = 1, progress: bool = True,
            desc: str = "problems", fn: Callable[[Any], Any] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """fn(job) for every job, `concurrency` at a time (the engine serves their requests
        together), with a progress bar; yields (job, what fn returned) as each finishes, so
        the caller writes each result at once and an interrupted run loses only what was in
        flight. Default fn: solve the Job (its record written), skipping the Jobs whose
        record is already there (resume)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from tqdm.auto import tqdm

        jobs = list(jobs)
        todo = jobs
        if fn is None:
            done = self.done()
            todo = [j for j in jobs if j.key not in done]
            fn = lambda j: self.solve(j.problem, j.id, seed=j.seed, record=j.record)  # noqa: E731
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="problem",
                  disable=not progress) as bar, ThreadPoolExecutor(
                      max(1, concurrency), thread_name_prefix="run") as pool:
            # Only `concurrency` jobs are ever submitted: a job that fails or is interrupted
            # stops the run before the next starts (with all queued at once, the pool's worker
            # went on to the next jobs while the failure was still on its way to this thread).
            pending = iter(todo)
            running: dict = {}

            def start_next() -> None:
                job = next(pending, _END)
                if job is not _END:
                    running[pool.submit(fn, job)] = job

            try:
                for _ in range(max(1, concurrency)):
                    start_next()
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job = running.pop(future)
                        result = future.result()
                        bar.update(1)
                        start_next()  # before the caller writes: the engine stays busy
                        yield job, result
            except BaseException:  # Ctrl-C or a failure: start nothing more, keep what is done
                for f in running:
                    f.cancel()
                raise

    def close(self) -> None:
        """Shut the engine (and every process it started) and the sandbox down; an engine
        whose close() does not return within close_timeout_s is abandoned, its processes
        killed. The lock is held only to take them out of use."""
        sandbox = None
        with self._lock:
            engine, procs = self._detach()
            if self._own_sandbox:
                sandbox, self._sandbox = self._sandbox, None
        self._shut(engine, procs)
        if sandbox is not None:
            sandbox.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_END = object()  # no job left (a job may be any object, None included)


def _secs(value: float | None) -> str:
    return "none" if value is None else f"{value:.0f} s"
