"""The engine's health, for the run loop (aimo_lib.run.Runner, which this is a part of): build,
probe, restart, wait for a remote server, give up, close. Steps 2 and 4 of the run loop's
docstring; the state it keeps (the engine, its generation, its processes, the restart counts)
is Runner's, set up in Runner.__init__."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import TimeoutError as FuturesTimeout  # not TimeoutError before 3.11

from .engines import Engine, GenerationParams, as_engine
from .pools import in_daemon_thread
from .reaper import Reaper
from .records import log
from .results import SolveResult

__all__ = ["CLOSE_TIMEOUT_S", "EngineHealth", "probe"]

# An engine's close() gets this long before it is abandoned: vLLM's own shutdown waits up to
# 60 s for its engine core, then 10 s for its loop; a server gets 10 s after SIGTERM.
CLOSE_TIMEOUT_S = 120.0
_SANDBOX_WORKER = "aimo_lib._sandbox_worker"  # the sandbox's processes: never an engine's


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


class EngineHealth:
    """Runner's engine life: the methods that build, probe, restart and close its engine."""

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
