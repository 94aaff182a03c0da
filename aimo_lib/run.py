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

import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .budget import TimeBudget
from .competitions import get_competition, validate_answer
from .config import RunConfig
from .engine_health import CLOSE_TIMEOUT_S, EngineHealth, probe
from .engines import Engine, as_engine
from .presets import SolverConfig
from .reaper import Reaper
from .records import Records, log
from .resolve import machine_probe, resolve
from .results import Sample, SolveResult

__all__ = ["Job", "Outcome", "Runner"]

_RETRY_MIN_S = 20.0  # a problem whose engine died is tried again if this much time is left


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


class Runner(EngineHealth):
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
                 remote_wait_s: float = 300.0, close_timeout_s: float = CLOSE_TIMEOUT_S):
        if config.resolved is None:  # probing the machine costs a torch import: only if needed
            config = resolve(config, machine_probe())
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
