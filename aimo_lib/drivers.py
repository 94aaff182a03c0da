"""The two ways the solver drives its samples through their steps (aimo_lib.step):

- rounds: every live sample generates in one batch, then all decide, then all code runs
  (the seed notebook's loop; best for batched engines such as HFEngine or offline vLLM);
- async: each sample goes generate -> execute -> generate on its own, with no barrier
  between samples (engines with `submit`: vLLM async, OpenAI-compatible servers).

Both ask the solver's consensus after each sample's step and stop at the deadline; nothing an
engine or the sandbox does raises out of them (a failure stays with its sample).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FuturesTimeout  # not TimeoutError before 3.11
from typing import Protocol

from .engines import ContextLengthError, Engine, EngineError, GenerationParams, Request
from .pools import in_daemon_thread
from .presets import SolverConfig
from .results import CodeCall, Sample, Status
from .sandbox import ExecutionResult, Sandbox
from .step import Action, Run, Steps

__all__ = ["run_async", "run_rounds"]

_GRACE_S = 0.5  # wait this long past the deadline for an engine that says it honours it
_POLL_S = 1.0  # the async driver looks at its requests at least this often
_GENERATE = (Action.STEP, Action.ANSWER, Action.RESUME, Action.CONTINUE)


class Solving(Protocol):
    """What a driver needs of the solver (aimo_lib.solver.Solver is one)."""

    config: SolverConfig
    engine: Engine
    sandbox: Sandbox
    steps: Steps
    pool: ThreadPoolExecutor

    def out_of_time(self, run: Run) -> bool: ...
    def consensus(self, run: Run, pending: int) -> bool: ...
    def prompt(self, run: Run, s: Sample) -> str | list[int]: ...
    def params(self, run: Run, s: Sample, kind: Action) -> GenerationParams | None: ...


# ---------------------------------------------------------------- rounds


def run_rounds(solver: Solving, run: Run) -> None:
    live = list(run.samples)
    while live and not solver.out_of_time(run):
        batch = [(s, Action.STEP) for s in live]
        while batch and not solver.out_of_time(run):  # a step, plus continuations
            outcomes = _generate_batch(solver, run, batch)
            more, to_run = [], []
            for (s, kind), outcome in zip(batch, outcomes, strict=True):
                action = solver.steps.take(run, s, outcome, kind)
                if action is Action.EXECUTE:
                    to_run.append(s)
                elif action in (Action.ANSWER, Action.RESUME):
                    more.append((s, action))
            batch = more
            _execute(solver, run, to_run)
        live = [s for s in live if s.status == Status.RUNNING]
        if live and solver.consensus(run, pending=len(live)):
            break


def _generate_batch(solver: Solving, run: Run, batch: list[tuple[Sample, Action]]) -> list:
    """One Completion (or the exception that failed it) per request of the batch; None
    for requests the deadline cut. A batch that fails as a whole (one bad prompt fails a
    vLLM batch) is retried request by request, so a failure stays with its sample."""
    requests = []
    for s, kind in batch:
        params = solver.params(run, s, kind)
        requests.append(None if params is None else (solver.prompt(run, s), params))
    todo = [i for i, r in enumerate(requests) if r is not None]
    out: list = [ContextLengthError("the context is full")] * len(batch)
    if not todo:
        return out
    call = lambda idx: _call_engine(solver, run, [requests[i][0] for i in idx],  # noqa: E731
                                    [requests[i][1] for i in idx])
    try:
        done = call(todo)
    except Exception as exc:  # noqa: BLE001 - isolate the failing request(s)
        if len(todo) == 1:
            done = [_retry_once(exc, lambda: call(todo))]
        else:
            done = [None if solver.out_of_time(run) else _retry_once(None, lambda i=i: call([i]))
                    for i in todo]
    for i, c in zip(todo, done if done is not None else [None] * len(todo), strict=True):
        out[i] = c
    return out


def _call_engine(solver: Solving, run: Run, prompts: list, params: list) -> list | None:
    """engine.generate, waited for until the deadline at most (None: cut by it, and only
    then: what the engine returns is checked, one completion per prompt). What the engine
    raises comes out as an Exception, so that it fails requests, not the problem."""
    engine = solver.engine
    try:
        if run.deadline is None:
            return _completions(engine.generate(prompts, params), len(prompts))
        future = in_daemon_thread(lambda: engine.generate(prompts, params, deadline=run.deadline))
        # An engine that stops at the deadline itself returns what it has a moment later;
        # one that does not is abandoned at the deadline (its result is dropped).
        grace = _GRACE_S if engine.supports_deadline else 0.0
        try:
            out = future.result(timeout=max(0.0, run.deadline - time.monotonic() + grace))
        except FuturesTimeout:
            run.timed_out = True
            return None
        return _completions(out, len(prompts))
    except (KeyboardInterrupt, Exception):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, CancelledError: a failure
        raise EngineError(f"the engine raised {type(exc).__name__}: {exc}") from exc


def _execute(solver: Solving, run: Run, samples: list[Sample]) -> None:
    """Run the samples' code blocks concurrently; none starts after the deadline."""
    if not samples:
        return
    if not solver.config.stateful:  # one batch on the sandbox's own pool, a worker each
        codes = [solver.steps.dialect.code(s.text) or ("", "") for s in samples]
        refused = [_refused(solver, s) for s in samples]
        todo = [c for (_, c), r in zip(codes, refused, strict=True) if r is None]
        try:
            ran = iter(solver.sandbox.run_many(todo, **_run_kwargs(solver, run)) if todo else [])
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a sandbox failure: these blocks' output
            ran = iter([ExecutionResult("crashed", f"[sandbox error: {exc}]", 0.0)] * len(todo))
        done = [r if r is not None else next(ran) for r in refused]
        for s, (written, _), r in zip(samples, codes, done, strict=True):
            solver.steps.guard(run, s, lambda s=s, w=written, r=r: _append_output(solver, s, w, r))
        return
    futures = [solver.pool.submit(run_code, solver, run, s) for s in samples]
    timeout = None if run.deadline is None else max(0.0, run.deadline - time.monotonic()
                                                    + _GRACE_S)
    wait(futures, timeout=timeout)
    for s, f in zip(samples, futures, strict=True):
        if f.done():
            solver.steps.guard(run, s, lambda s=s, f=f: _append_output(solver, s, *f.result()))
        else:  # still running past the deadline: it is cut by its own timeout
            run.timed_out = True


# ---------------------------------------------------------------- async


def run_async(solver: Solving, run: Run) -> None:
    steps, engine = solver.steps, solver.engine
    # a generation's Request, or None for a code run on the solver's pool
    pending: dict[Future, tuple[Sample, Action, Request | None]] = {}

    def generate(s: Sample, kind: Action) -> None:
        if solver.out_of_time(run):
            return  # nothing new starts after the deadline
        params = solver.params(run, s, kind)
        if params is None:
            return
        try:
            request = engine.submit(solver.prompt(run, s), params)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the request failed before it started
            request = Request(Future())
            request.future.set_exception(exc)
        pending[request.future] = (s, kind, request)

    def take(future: Future) -> None:
        """Read one finished request or code run and start the sample's next one."""
        s, kind, request = pending.pop(future)
        if s.status != Status.RUNNING:
            return
        if request is None:  # a code run
            if future.cancelled():  # not by us (we abort only after this loop)
                return
            steps.guard(run, s, lambda: _append_output(solver, s, *future.result()))
            action = Action.STEP if s.status == Status.RUNNING else Action.DONE
        elif future.cancelled():
            action = steps.take(run, s, EngineError(
                "the request was cancelled (the engine was closed under it?)"), kind)
        else:
            exc = future.exception()
            if exc is not None and _transient(exc) and not s.retried:
                s.retried = True  # once per sample: a flapping server gets no more
                steps.guard(run, s, lambda: generate(s, kind))
                return
            c = future.result() if exc is None else exc
            action = steps.take(run, s, EngineError(
                "the engine's request returned None, not a completion") if c is None
                else c, kind)
        if action is Action.EXECUTE and not solver.out_of_time(run):
            pending[solver.pool.submit(run_code, solver, run, s)] = (s, Action.EXECUTE, None)
        elif action in _GENERATE:
            nxt = Action.STEP if action is Action.CONTINUE else action
            steps.guard(run, s, lambda: generate(s, nxt))

    for s in run.samples:
        steps.guard(run, s, lambda s=s: generate(s, Action.STEP))
    while pending and not run.stopped_early:
        left = _POLL_S if run.deadline is None else run.deadline - time.monotonic()
        done, _ = wait(pending, timeout=max(0.0, min(left, _POLL_S)),
                       return_when=FIRST_COMPLETED)
        # a future cancelled without its waiters being told (Future.cancel) never wakes
        # wait(): it is looked for at every poll
        done |= {f for f in pending if f.cancelled()}
        if not done:
            if solver.out_of_time(run):
                break
            continue
        # One at a time in sample order, the consensus looked at after each: which samples
        # an early stop counts must not depend on how many a busy machine hands back at once
        for future in sorted(done, key=lambda f: pending[f][0].index):
            take(future)
            running = sum(s.status == Status.RUNNING for s in run.samples)
            if running and solver.consensus(run, pending=running):
                break
    for future, (_, _, request) in pending.items():  # stragglers: stop generating
        try:
            if request is not None:
                engine.abort(request)
            else:
                future.cancel()  # a running code block ends by its own timeout
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - an abort that fails changes nothing here
            pass


# ---------------------------------------------------------------- code execution


def run_code(solver: Solving, run: Run, s: Sample) -> tuple[str, ExecutionResult]:
    """Execute the sample's last block (never after the deadline); never raises."""
    written, code = solver.steps.dialect.code(s.text) or ("", "")
    if (refused := _refused(solver, s)) is not None:
        return written, refused
    kwargs = _run_kwargs(solver, run)
    try:
        if not solver.config.stateful:
            return written, solver.sandbox.run(code, **kwargs)
        if s.session is None and not run.finished:
            s.session = solver.sandbox.session()
        if s.session is None:
            return written, ExecutionResult("timeout", "[not run: the problem is over]", 0.0)
        return written, s.session.run(code, **kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a sandbox failure is this block's output
        return written, ExecutionResult("crashed", f"[sandbox error: {exc}]", 0.0)


def _refused(solver: Solving, s: Sample) -> ExecutionResult | None:
    """The note that answers a call past the sample's tool-call cap (None: run it)."""
    cap = solver.config.max_tool_calls
    if cap is None or len(s.code_calls) < cap:
        return None
    return ExecutionResult("refused", f"[not run: the limit of {cap} tool calls is "
                                      "reached; give your final answer now]", 0.0)


def _run_kwargs(solver: Solving, run: Run) -> dict:
    cfg, dialect = solver.config, solver.steps.dialect
    return dict(timeout_s=cfg.code_timeout_s, deadline=run.deadline, display=dialect.display,
                stderr_on_success=dialect.stderr_on_success,
                max_output_chars=cfg.max_output_chars)


def _append_output(solver: Solving, s: Sample, code: str, r: ExecutionResult) -> None:
    cfg = solver.config
    shown, added = solver.steps.dialect.tool_output(r, cfg.max_output_chars, cfg.code_timeout_s,
                                              s.text)
    s.code_calls.append(CodeCall(code, r.status, shown, r.duration_s))
    solver.steps.append(s, added)


# ---------------------------------------------------------------- engine outcomes


def _transient(exc: BaseException) -> bool:
    """Worth one more try: a dropped connection, a timeout, or an engine that says so."""
    return isinstance(exc, (ConnectionError, TimeoutError, FuturesTimeout)) or bool(
        getattr(exc, "transient", False))


def _retry_once(first: BaseException | None, call: Callable[[], list | None]):
    """The first completion of call(), retried once after a transient failure (`first`:
    the failure of a try already made). Returns a Completion, None (cut by the deadline) or
    the exception that failed the request: nothing is raised."""
    if first is not None and not _transient(first):
        return first
    tries = 1 if first is not None else 2
    for attempt in range(tries):
        try:
            out = call()
            return None if out is None else out[0]
        except Exception as exc:  # noqa: BLE001
            if attempt == tries - 1 or not _transient(exc):
                return exc
    return None  # unreachable


def _completions(out: object, n: int) -> list:
    """What generate returned, checked: `n` completions (an engine that returns None, a batch
    of the wrong size, or None for a request would otherwise leave samples that never end)."""
    if not isinstance(out, (list, tuple)):
        raise EngineError(f"the engine's generate returned {type(out).__name__}, not a list of "
                          "completions")
    if len(out) != n:
        raise EngineError(f"the engine returned {len(out)} completions for {n} prompts")
    if any(c is None for c in out):
        raise EngineError("the engine returned None instead of a completion")
    return list(out)
