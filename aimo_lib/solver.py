"""SC-TIR: self-consistency over tool-integrated reasoning traces.

    solver = Solver(engine, sandbox, SolverConfig.preset("numina_aimo1", num_samples=8))
    result = solver.solve(problem, time_limit_s=300)   # SolveResult: answer, votes, samples

N samples each alternate reasoning, a tool call (a ```python block) and its output, for up to
M generation steps; the answers are voted. One step of one sample: generate until the model
stops at a tool call (or an answer, or ends), then decide its fate in `_decide`: run its code,
restart it, or take its answer. How a transcript shows code, output and answer is the
config's dialect (aimo_lib.dialects: ToRA, the seed's reading of ToRA, gpt-oss harmony); the
loop is the same for all. Two drivers share that step:

- rounds: every live sample generates in one batch, then all decide, then all code runs
  (the seed notebook's loop; best for batched engines such as HFEngine or offline vLLM);
- async: each sample goes generate -> execute -> generate on its own, with no barrier
  between samples (engines with `submit`: vLLM async, OpenAI-compatible servers).

The configuration and its presets are in aimo_lib.presets, the records a solve produces in
aimo_lib.results.

Nothing a model writes, an engine does or the sandbox returns makes solve() raise: a failed
request fails its sample (transient failures are retried once), a sample whose processing
breaks is marked "error", and anything else is caught at the top, recorded in
`SolveResult.error`, and the best answer so far (or the flagged fallback) is returned. That
holds for BaseExceptions too (SystemExit, asyncio.CancelledError from an engine's event loop):
only KeyboardInterrupt goes through, so that Ctrl-C still stops a run.
With `time_limit_s=T`, solve() returns within T + ALLOWANCE_S: no code block starts after the
deadline, each block's timeout is cut to the time left, requests still running are aborted
where the engine can abort and abandoned where it cannot.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FuturesTimeout  # not TimeoutError before 3.11
from dataclasses import dataclass, field

from .answers import Vote, vote
from .budget import ALLOWANCE_S
from .competitions import get_competition
from .dialects import get_dialect
from .engines import ContextLengthError, EngineError, GenerationParams, Request, as_engine
from .pools import prestarted_pool
from .presets import PRESETS, SolverConfig, config_for_run, preset_for_model
from .prompts import problem_statement, verification_problem
from .results import CodeCall, Sample, SolveResult, clean_entropies, entropy_weight
from .sandbox import ExecutionResult, Sandbox

__all__ = ["ALLOWANCE_S", "PRESETS", "CodeCall", "Sample", "SolveResult", "Solver",
           "SolverConfig", "config_for_run", "entropy_weight", "preset_for_model"]

_GRACE_S = 0.5  # wait this long past the deadline for an engine that says it honours it
_POLL_S = 1.0  # the async driver looks at its requests at least this often
_MAX_RESUMES = 8  # continuations of one step (a stop string that meant nothing)
_MAX_ANSWER_TRIES = 4  # continuations to close an answer's nested braces
# A time limit longer than this is no limit: waits cannot take one past threading.TIMEOUT_MAX
# (an OverflowError), and `--time-limit inf` means none.
_NO_LIMIT_S = 365 * 86400.0


@dataclass
class _Run:
    """One solve() call in flight."""

    problem: str
    prompt: str
    samples: list[Sample]
    start: float
    deadline: float | None
    prompt_ids: list[int] | None = None
    stopped_early: bool = False
    timed_out: bool = False
    finished: bool = False  # solve() returned: code threads still running open nothing new
    error: str | None = None
    prior: list[Sample] = field(default_factory=list)  # earlier waves' samples (early stop)
    waves: list[_Run] = field(default_factory=list)  # later waves, run after this one


class Solver:
    """Runs SC-TIR on one problem at a time; safe to call from any thread (not only main)."""

    def __init__(self, engine, sandbox: Sandbox, config: SolverConfig | None = None):
        self.engine, self.sandbox = as_engine(engine), sandbox
        self.config = config or SolverConfig()
        self.config.rules  # noqa: B018 - validate the competition name now
        # Code runs happen on this pool; blocking generate calls on daemon threads of their
        # own (a call that never returns must not hold up the interpreter's exit).
        self._pool = prestarted_pool(max(8, self.config.num_samples), "solver")
        self.dialect = get_dialect(self.config.dialect, self.config.reasoning_effort)
        # Extra stop strings need an engine that says which stop string it hit.
        names = self.engine.names_stop_strings
        self._stops = self.dialect.stops(self.config.stop_at_boxed and names,
                                         self.config.stop_at_code_end and names)
        self._max_len = self.engine.max_model_len
        self._warned: set[str] = set()  # what was said loudly once already
        if self.config.vote_weights != "count" and not self.engine.supports_logprobs:
            print(f"[aimo] vote_weights={self.config.vote_weights!r}: "
                  f"{type(self.engine).__name__} gives no logprobs, so every sample counts "
                  "alike", file=sys.stderr, flush=True)

    @property
    def pipeline(self) -> str:
        """The driver solve() will use with this engine: "async" or "rounds"."""
        can = self.engine.supports_async
        if self.config.pipeline == "async" and not can:
            raise ValueError(f"{type(self.engine).__name__} cannot run the async pipeline")
        return "async" if self.config.pipeline in ("auto", "async") and can else "rounds"

    def solve(self, problem: str, time_limit_s: float | None = None) -> SolveResult:
        """Solve one problem; never raises for what a model, an engine or the sandbox does.
        At `time_limit_s` generation is cut and the best answer so far is returned (within
        ALLOWANCE_S of the limit)."""
        cfg = self.config
        start = time.monotonic()
        deadline = _deadline(start, time_limit_s)
        run = _Run(str(problem), "", [Sample(i) for i in range(cfg.num_samples)], start,
                   deadline)
        try:
            self._drive(run, run.problem)
            if (candidates := self._retry_candidates(run)) is not None:
                self._second_wave(run, candidates)
        except KeyboardInterrupt:  # the user's: Ctrl-C stops the run
            raise
        except BaseException:  # noqa: BLE001 - a bug or a broken engine: keep what we have
            run.error = traceback.format_exc()
            print(f"[aimo] solve() broke down; answering from what it has:\n{run.error}",
                  file=sys.stderr, flush=True)
        finally:
            for r in (run, *run.waves):
                r.finished = True
            self._finish_stragglers(run)
            for s in run.samples:
                self._close_session(s)
        return self._result(run)

    def _drive(self, run: _Run, problem: str) -> None:
        """Render the prompt and generate the run's samples to the end."""
        cfg = self.config
        stated = problem_statement(
            problem, get_competition(cfg.competition).answer_instruction
            if cfg.state_answer_rules else None, cfg.check_before_boxing)
        run.prompt = self.dialect.prompt(cfg.prompt_template, stated, self.engine)
        if self.config.continue_from_ids and self.engine.accepts_token_ids:
            run.prompt_ids = list(self.engine.tokenize(run.prompt, special=True))
            for s in run.samples:
                s.ids = list(run.prompt_ids)
        if self.pipeline == "async":
            self._solve_async(run)
        else:
            self._solve_rounds(run)

    # ------------------------------------------------------------ adaptive retry

    def _retry_candidates(self, run: _Run) -> list[int] | None:
        """The answers a second wave is asked to check, most voted first; None: no second
        wave (off, a consensus, or too little time left)."""
        cfg = self.config
        if cfg.retry_samples < 1 or run.stopped_early or self._out_of_time(run):
            return None
        if run.deadline is not None:  # time for a wave: at least half what the first took
            now = time.monotonic()
            if run.deadline - now < 0.5 * (now - run.start):
                return None
        counts = vote([s.answer for s in run.samples], rules=cfg.rules).votes
        if max(counts.values(), default=0) >= cfg.retry_below * len(run.samples):
            return None
        return sorted(counts, key=lambda a: -counts[a])[:cfg.retry_candidates]

    def _second_wave(self, run: _Run, candidates: list[int]) -> None:
        """retry_samples more samples, prompted with the candidates; voted with the first."""
        cfg = self.config
        first = len(run.samples)
        wave = _Run(run.problem, "", [Sample(first + i, wave=1)
                                      for i in range(cfg.retry_samples)],
                    run.start, run.deadline, prior=list(run.samples))
        run.waves.append(wave)
        run.samples += wave.samples  # closed, finished and voted with the first wave's
        try:
            self._drive(wave, verification_problem(run.problem, candidates))
        finally:
            run.stopped_early |= wave.stopped_early
            run.timed_out |= wave.timed_out

    # ------------------------------------------------------------ the round driver

    def _solve_rounds(self, run: _Run) -> None:
        live = list(run.samples)
        while live and not self._out_of_time(run):
            batch = [(s, "step") for s in live]
            while batch and not self._out_of_time(run):  # a step, plus continuations
                completions = self._generate_batch(run, batch)
                more, to_run = [], []
                for (s, kind), c in zip(batch, completions, strict=True):
                    action = self._take(run, s, c, kind)
                    if action == "execute":
                        to_run.append(s)
                    elif action in ("answer", "resume"):
                        more.append((s, action))
                batch = more
                self._execute(run, to_run)
            live = [s for s in live if s.status == "running"]
            if live and self._consensus(run, pending=len(live)):
                break

    def _generate_batch(self, run: _Run, batch: list[tuple[Sample, str]]) -> list:
        """One Completion (or the exception that failed it) per request of the batch; None
        for requests the deadline cut. A batch that fails as a whole (one bad prompt fails a
        vLLM batch) is retried request by request, so a failure stays with its sample."""
        requests = []
        for s, kind in batch:
            params = self._params(run, s, kind)
            requests.append(None if params is None else (self._prompt(run, s), params))
        todo = [i for i, r in enumerate(requests) if r is not None]
        out: list = [ContextLengthError("the context is full")] * len(batch)
        if not todo:
            return out
        try:
            done = self._call_engine(run, [requests[i][0] for i in todo],
                                     [requests[i][1] for i in todo])
        except Exception as exc:  # noqa: BLE001 - isolate the failing request(s)
            one = lambda i: lambda: self._call_engine(run, [requests[i][0]], [requests[i][1]])
            if len(todo) == 1:
                done = [_retry_once(exc, one(todo[0]))]
            else:
                done = [None if self._out_of_time(run) else _retry_once(None, one(i))
                        for i in todo]
        for i, c in zip(todo, done if done is not None else [None] * len(todo), strict=True):
            out[i] = c
        return out

    def _call_engine(self, run: _Run, prompts: list, params: list) -> list | None:
        """engine.generate, waited for until the deadline at most (None: cut by it, and only
        then: what the engine returns is checked, one completion per prompt). What the engine
        raises comes out as an Exception, so that it fails requests, not the problem."""
        try:
            if run.deadline is None:
                return _completions(self.engine.generate(prompts, params), len(prompts))
            knows_deadline = self.engine.supports_deadline
            future = in_daemon_thread(
                lambda: self.engine.generate(prompts, params, deadline=run.deadline))
            # An engine that stops at the deadline itself returns what it has a moment later;
            # one that does not is abandoned at the deadline (its result is dropped).
            wait_s = run.deadline - time.monotonic() + (_GRACE_S if knows_deadline else 0.0)
            try:
                out = future.result(timeout=max(0.0, wait_s))
            except FuturesTimeout:
                run.timed_out = True
                return None
            return _completions(out, len(prompts))
        except (KeyboardInterrupt, Exception):
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit, CancelledError: a failure
            raise EngineError(f"the engine raised {type(exc).__name__}: {exc}") from exc

    def _execute(self, run: _Run, samples: list[Sample]) -> None:
        """Run the samples' code blocks concurrently; none starts after the deadline."""
        if not samples:
            return
        if not self.config.stateful:  # one batch on the sandbox's own pool, a worker each
            codes = [self._code(s) for s in samples]
            refused = [self._refused(s) for s in samples]
            todo = [c for (_, c), r in zip(codes, refused, strict=True) if r is None]
            try:
                ran = iter(self.sandbox.run_many(todo, **self._run_kwargs(run)) if todo else [])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a sandbox failure: these blocks' output
                ran = iter([ExecutionResult("crashed", f"[sandbox error: {exc}]", 0.0)] * len(todo))
            done = [r if r is not None else next(ran) for r in refused]
            for s, (written, _), r in zip(samples, codes, done, strict=True):
                self._guard(run, s, lambda s=s, w=written, r=r: self._append_output(s, w, r))
            return
        futures = [self._pool.submit(self._run_code, run, s) for s in samples]
        timeout = None if run.deadline is None else max(
            0.0, run.deadline - time.monotonic() + _GRACE_S)
        wait(futures, timeout=timeout)
        for s, f in zip(samples, futures, strict=True):
            if f.done():
                self._guard(run, s, lambda s=s, f=f: self._append_output(s, *f.result()))
            else:  # still running past the deadline: it is cut by its own timeout
                run.timed_out = True

    # ------------------------------------------------------------ the async driver

    def _solve_async(self, run: _Run) -> None:
        # a generation's Request, or None for a code run on our pool
        pending: dict[Future, tuple[Sample, str, Request | None]] = {}

        def generate(s: Sample, kind: str) -> None:
            if self._out_of_time(run):
                return  # nothing new starts after the deadline
            params = self._params(run, s, kind)
            if params is None:
                return
            try:
                request = self.engine.submit(self._prompt(run, s), params)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - the request failed before it started
                request = Request(Future())
                request.future.set_exception(exc)
            pending[request.future] = (s, kind, request)

        def take(future: Future) -> None:
            """Read one finished request or code run and start the sample's next one."""
            s, kind, _ = pending.pop(future)
            if s.status != "running":
                return
            if future.cancelled():  # not by us (we abort only after this loop)
                if kind == "code":
                    return
                action = self._take(run, s, EngineError(
                    "the request was cancelled (the engine was closed under it?)"), kind)
            elif kind == "code":
                self._guard(run, s, lambda: self._append_output(s, *future.result()))
                action = "step" if s.status == "running" else "done"
            else:
                exc = future.exception()
                if exc is not None and _transient(exc) and not s.retried:
                    s.retried = True  # once per sample: a flapping server gets no more
                    self._guard(run, s, lambda: generate(s, kind))
                    return
                c = future.result() if exc is None else exc
                action = self._take(run, s, EngineError(
                    "the engine's request returned None, not a completion") if c is None
                    else c, kind)
            if action == "execute" and not self._out_of_time(run):
                pending[self._pool.submit(self._run_code, run, s)] = (s, "code", None)
            elif action in ("step", "answer", "resume", "continue"):
                self._guard(run, s, lambda: generate(s, "step" if action == "continue"
                                                     else action))

        for s in run.samples:
            self._guard(run, s, lambda s=s: generate(s, "step"))
        while pending and not run.stopped_early:
            left = _POLL_S if run.deadline is None else run.deadline - time.monotonic()
            done, _ = wait(pending, timeout=max(0.0, min(left, _POLL_S)),
                           return_when=FIRST_COMPLETED)
            # a future cancelled without its waiters being told (Future.cancel) never wakes
            # wait(): it is looked for at every poll
            done |= {f for f in pending if f.cancelled()}
            if not done:
                if self._out_of_time(run):
                    break
                continue
            # One at a time in sample order, the consensus looked at after each: which samples
            # an early stop counts must not depend on how many a busy machine hands back at once
            for future in sorted(done, key=lambda f: pending[f][0].index):
                take(future)
                running = sum(s.status == "running" for s in run.samples)
                if running and self._consensus(run, pending=running):
                    break
        for future, (_, _, request) in pending.items():  # stragglers: stop generating
            try:
                if request is not None:
                    self.engine.abort(request)
                else:
                    future.cancel()  # a running code block ends by its own timeout
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - an abort that fails changes nothing here
                pass

    # ------------------------------------------------------------ one sample's step

    def _take(self, run: _Run, s: Sample, c, kind: str) -> str:
        """Take one request's outcome (a Completion, the exception that failed it, or None
        when the deadline cut it) and return the sample's next action."""
        if c is None:
            return "done"  # cut by the deadline; _finish_stragglers marks it
        if isinstance(c, ContextLengthError):
            s.status, s.error = "context_full", str(c)[:300]
            return self._end(run, s)
        if isinstance(c, BaseException):
            s.status, s.error = "error", f"{type(c).__name__}: {c}"[:300]
            return self._end(run, s)
        return self._guard(run, s, lambda: self._on_generated(run, s, c, kind))

    def _guard(self, run: _Run, s: Sample, fn: Callable[[], str | None]) -> str:
        """fn() for one sample; whatever it raises fails that sample only."""
        try:
            return fn() or "done"
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - one sample's breakdown, not the problem's
            s.status, s.error = "error", f"{type(exc).__name__}: {exc}"[:300]
            return self._end(run, s)

    def _end(self, run: _Run, s: Sample) -> str:
        s.elapsed_s = time.monotonic() - run.start
        self._close_session(s)
        return "done"

    def _on_generated(self, run: _Run, s: Sample, c, kind: str) -> str:
        """Take a completion; return "execute", "step" (generate again: restarted),
        "answer" (close a \\boxed{), "resume" (carry on), "continue" (next step, answered:
        keep_answered), or "done"."""
        cfg = self.config
        text = c.text if isinstance(c.text, str) else ""
        s.text += text
        s.tokens += int(c.num_tokens or 0)
        s.finish_reason = c.finish_reason
        if c.entropies:
            self._add_entropies(s, clean_entropies(c.entropies))
        if s.ids is not None:
            s.ids += list(c.token_ids) if c.token_ids is not None else self.engine.tokenize(text)
        if kind == "step":
            s.steps, s.resumes = s.steps + 1, 0
            if self.dialect.lost_special_tokens(text):
                # Read on, every step would read as nothing, for ever: say why, once, loudly.
                why = (f"the engine's text has none of the {self.dialect.name} format's special "
                       "tokens: the engine or server strips them (skip_special_tokens), so no "
                       "tool call and no answer can be read. Serve it so that they are kept: "
                       "vLLM and OpenAI-compatible /v1/completions servers take "
                       "skip_special_tokens=false per request (the solver asks for it); a chat "
                       "endpoint, or a server that ignores it, cannot serve this format")
                self._say_once("special tokens", why)
                s.status, s.error = "error", why
                return self._end(run, s)
        added, event = self.dialect.after(s.text, c.finish_reason, kind, self._stops)
        if added:
            self._append(s, added)  # e.g. the output fence after a closed code block
        if event == "resume" and s.resumes < _MAX_RESUMES:
            s.resumes += 1
            return "resume"
        if event == "answer":
            s.answer_tries = 0
            return "answer"
        if event == "answer_unclosed" and s.answer_tries < _MAX_ANSWER_TRIES:
            s.answer_tries += 1
            return "answer"
        action = self._decide(run.prompt, s, last_step=s.steps >= cfg.max_rounds)
        if action == "restart":
            self._close_session(s)
            s.text, s.code_calls, s.restarts = "", [], s.restarts + 1
            self._add_entropies(s, None)  # the confidence of the attempt that answers
            if s.ids is not None:
                s.ids = list(run.prompt_ids)
            if s.steps < cfg.max_rounds:
                return "step"
            s.status = "exhausted"  # restarted in its last step: nothing left to generate
        if s.status != "running":
            self._end(run, s)
        return action

    def _decide(self, prompt: str, s: Sample, last_step: bool) -> str:
        """"execute", "restart", "continue" or "done" (s.status set). The order is the seed
        notebook's."""
        cfg = self.config
        reading = self.dialect.read(prompt, s.text)
        if reading.kind == "no_code":
            return self._fail(s)  # it never wrote code: the seed discards even a correct answer
        if reading.kind == "unverified":
            s.status = "hallucinated"  # claims an answer without ever running code
            return "done"
        if reading.kind == "answer":
            s.raw_answer = reading.raw
            s.answer = self.dialect.to_int(reading.raw, cfg.rules)
            if cfg.keep_answered and not last_step:
                return "continue"  # the seed: generated again, its answer re-read
            s.status = "answered"
            return "done"
        if last_step:
            s.status = "exhausted"  # no step left to show it the output
            return "done"
        if s.capped and s.finish_reason == "length":
            s.status = s.capped  # a restart would not help it: end it (an answer counts)
            return "done"
        if reading.kind != "call":
            # ended (EOS or max tokens) with neither a tool call nor an answer, or a call
            # with no code in it
            return self._fail(s)
        return "execute"

    def _fail(self, s: Sample) -> str:
        if self.config.restart_on_fail:
            return "restart"
        s.status = "pruned"
        return "done"

    # ------------------------------------------------------------ code execution

    def _code(self, s: Sample) -> tuple[str, str]:
        """(the call's code as the model wrote it, the code to execute)."""
        return self.dialect.code(s.text) or ("", "")

    def _refused(self, s: Sample) -> ExecutionResult | None:
        """The note that answers a call past the sample's tool-call cap (None: run it)."""
        cap = self.config.max_tool_calls
        if cap is None or len(s.code_calls) < cap:
            return None
        return ExecutionResult("refused", f"[not run: the limit of {cap} tool calls is "
                                          "reached; give your final answer now]", 0.0)

    def _run_code(self, run: _Run, s: Sample) -> tuple[str, ExecutionResult]:
        """Execute the sample's last block (never after the deadline); never raises."""
        written, code = self._code(s)
        if (refused := self._refused(s)) is not None:
            return written, refused
        kwargs = self._run_kwargs(run)
        try:
            if not self.config.stateful:
                return written, self.sandbox.run(code, **kwargs)
            if s.session is None and not run.finished:
                s.session = self.sandbox.session()
            if s.session is None:
                return written, ExecutionResult("timeout", "[not run: the problem is over]", 0.0)
            return written, s.session.run(code, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a sandbox failure is this block's output
            return written, ExecutionResult("crashed", f"[sandbox error: {exc}]", 0.0)

    def _run_kwargs(self, run: _Run) -> dict:
        return dict(timeout_s=self.config.code_timeout_s, deadline=run.deadline,
                    display=self.dialect.display,
                    stderr_on_success=self.dialect.stderr_on_success,
                    max_output_chars=self.config.max_output_chars)

    def _append_output(self, s: Sample, code: str, r: ExecutionResult) -> None:
        cfg = self.config
        shown, added = self.dialect.tool_output(r, cfg.max_output_chars, cfg.code_timeout_s,
                                                s.text)
        s.code_calls.append(CodeCall(code, r.status, shown, r.duration_s))
        self._append(s, added)

    def _append(self, s: Sample, text: str) -> None:
        """Add text the model did not generate (tool output, a fence) to a sample."""
        s.text += text
        if s.ids is not None:
            s.ids += self.engine.tokenize(text)

    def _say_once(self, key: str, message: str) -> None:
        """A problem with the set-up, not with one sample: on stderr, once per solver."""
        if key not in self._warned:
            self._warned.add(key)
            print(f"[aimo] !!! {message}", file=sys.stderr, flush=True)

    def _close_session(self, s: Sample) -> None:
        if s.session is not None:
            session, s.session = s.session, None
            self._pool.submit(session.close)  # may wait for a block still running

    # ------------------------------------------------------------ stopping and voting

    def _out_of_time(self, run: _Run) -> bool:
        if run.deadline is not None and time.monotonic() >= run.deadline:
            run.timed_out = True
        return run.timed_out

    def _add_entropies(self, s: Sample, entropies: list[float] | None) -> None:
        """Add a completion's token entropies to the sample's confidence (None: forget them,
        the sample restarted), keeping its mean and tail entropy current: early stop weighs
        samples while they run."""
        if entropies is None:
            s.entropies, s.entropy_total = [], 0.0
            s.mean_entropy = s.tail_entropy = None
            return
        if not entropies:
            return
        s.entropies += entropies
        s.entropy_total += sum(entropies)
        s.mean_entropy = s.entropy_total / len(s.entropies)
        tail = s.entropies[-self.config.entropy_tail_tokens:]
        s.tail_entropy = sum(tail) / len(tail)

    def weights(self, samples: list[Sample]) -> list[float]:
        """Each sample's vote weight (finite, >= 0): code_ok_weight for a sample whose code all
        ran cleanly, times its entropy weight when the config asks for one."""
        cfg = self.config
        w = cfg.code_ok_weight
        weights = [w if s.code_calls and all(c.status == "ok" for c in s.code_calls) else 1.0
                   for s in samples]
        if cfg.vote_weights in ("count", "share_tail_tiebreak"):
            return weights
        return [x * entropy_weight(s, cfg.vote_weights, cfg.entropy_sharpness)
                for x, s in zip(weights, samples, strict=True)]

    def tally(self, samples: list[Sample]) -> Vote:
        """The final vote over these samples: their answers, weighted (see weights); with
        vote_weights "share_tail_tiebreak" (the AIMO 3 2nd place's selection) the answers with
        the most votes tie-break on the median tail entropy of their samples, lowest first."""
        cfg = self.config
        if cfg.vote_weights != "share_tail_tiebreak":
            return vote([s.answer for s in samples], self.weights(samples), rules=cfg.rules)
        counted = vote([s.answer for s in samples], rules=cfg.rules)
        if counted.fallback:
            return counted
        top = max(counted.votes.values())
        tied = [a for a, n in counted.votes.items() if n == top]
        if len(tied) == 1:
            return counted

        def median_tail(answer: int) -> float:
            hs = sorted(s.tail_entropy for s in samples if s.answer == answer
                        and s.tail_entropy is not None and math.isfinite(s.tail_entropy))
            return hs[len(hs) // 2] if hs else math.inf  # no entropies: last, first-seen order

        return Vote(min(tied, key=median_tail), counted.votes, False)

    def _consensus(self, run: _Run, pending: int) -> bool:
        """Early stop: the rule decides on counts of answers (the table's "k of n" are
        samples), and a stop is taken only where the final, weighted vote of the samples so
        far names the same answer. So an early stop never answers other than the full vote of
        the samples it had, and never stops on a count's consensus that the weights overturn
        (the samples still running may yet turn the weighted vote)."""
        cfg = self.config
        if cfg.early_stop is None or run.stopped_early:
            return run.stopped_early
        samples = run.prior + run.samples
        counts = vote([s.answer for s in samples], rules=cfg.rules)  # one per sample
        if cfg.early_stop.should_stop({a: int(c) for a, c in counts.votes.items()}, pending) and (
                self.tally(samples).answer == counts.answer):
            run.stopped_early = True
        return run.stopped_early

    def _finish_stragglers(self, run: _Run) -> None:
        now = time.monotonic() - run.start
        for s in run.samples:
            if s.status == "running":
                s.status = ("answered" if s.answer is not None else  # kept answered samples
                            "cancelled" if run.stopped_early else
                            "timeout" if run.timed_out else "exhausted")
                s.elapsed_s = now

    def _prompt(self, run: _Run, s: Sample):
        return list(s.ids) if s.ids is not None else run.prompt + s.text

    def _params(self, run: _Run, s: Sample, kind: str) -> GenerationParams | None:
        """The request's parameters; None when the sample's context is full (it then ends,
        and its answer, if it has one, still counts)."""
        cfg = self.config
        seed = cfg.seed * 1_000_003 + s.steps * 10_007 + s.index * 7 + s.answer_tries
        max_tokens = cfg.answer_max_tokens if kind == "answer" else cfg.max_new_tokens
        limits = []  # (tokens left, the status a sample cut there ends with, why)
        if (room := self._room(run, s)) is not None:
            limits.append((room, "context_full", f"the context ({self._max_len} tokens) is full"))
        if cfg.sample_max_tokens is not None:
            limits.append((cfg.sample_max_tokens - s.tokens, "exhausted",
                           f"its budget of {cfg.sample_max_tokens} tokens is spent"))
        s.capped = None
        for left, status, why in sorted(limits):
            if left < 1:
                s.status, s.error = status, why
                self._end(run, s)
                return None
            if left <= max_tokens:
                max_tokens, s.capped = left, status
        common = dict(max_tokens=max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                      seed=seed, skip_special_tokens=self.dialect.skip_special_tokens,
                      logprobs=cfg.logprobs_top_k if self.engine.supports_logprobs else 0)
        if kind == "answer":  # the rest of an answer the model opened: up to its "}"
            return GenerationParams(stop=("}",), **common)
        return GenerationParams(stop=self._stops, include_stop_str_in_output=True, **common)

    def _room(self, run: _Run, s: Sample) -> int | None:
        """Tokens the model may still generate for this sample (None: unknown)."""
        if not self._max_len:
            return None
        if s.ids is not None:
            used = len(s.ids)
        else:
            used = self.engine.count_tokens(run.prompt + s.text)
            if used is None:
                return None
        return self._max_len - used

    def _result(self, run: _Run) -> SolveResult:
        cfg = self.config
        # Plain majority, ties to the first seen: the seed's Counter.most_common() too.
        try:
            v = self.tally(run.samples)
        except Exception:  # noqa: BLE001 - a weighting bug must not lose the problem: count
            error = traceback.format_exc()
            run.error = f"{run.error}\n{error}" if run.error else error
            v = vote([s.answer for s in run.samples], rules=cfg.rules)
        return SolveResult(
            problem=run.problem, answer=v.answer, votes=v.votes, fallback=v.fallback,
            stopped_early=run.stopped_early, samples=run.samples,
            tokens_generated=sum(s.tokens for s in run.samples),
            elapsed_s=time.monotonic() - run.start, preset=cfg.name, timed_out=run.timed_out,
            error=run.error, prompt=run.prompt)


def _deadline(start: float, time_limit_s: float | None) -> float | None:
    """The monotonic deadline of a limit: None for no limit (None, inf, or more than a year),
    `start` for a limit of zero, a negative one or NaN (answer at once)."""
    if time_limit_s is None or time_limit_s >= _NO_LIMIT_S:
        return None
    return start + (time_limit_s if time_limit_s > 0 else 0.0)  # NaN > 0 is False


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


def in_daemon_thread(fn: Callable[[], object], name: str = "solver-generate") -> Future:
    """fn() on a daemon thread of its own: abandoned when it outlives its deadline, without
    holding up the interpreter's exit (a ThreadPoolExecutor's threads are joined at exit)."""
    future: Future = Future()

    def target() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    threading.Thread(target=target, daemon=True, name=name).start()
    return future
