"""SC-TIR: self-consistency over tool-integrated reasoning traces.

    solver = Solver(engine, sandbox, SolverConfig.preset("numina_aimo1", num_samples=8))
    result = solver.solve(problem, time_limit_s=300)   # SolveResult: answer, votes, samples

N samples each alternate reasoning, a tool call (a ```python block) and its output, for up to
M generation steps; the answers are voted (aimo_lib.voting). One step of one sample is the
state machine of aimo_lib.step; the drivers of aimo_lib.drivers take every sample through its
steps, in rounds (batched engines) or asynchronously (engines with `submit`). How a
transcript shows code, output and answer is the config's dialect (aimo_lib.dialects: ToRA,
the seed's reading of ToRA, gpt-oss harmony). Early stop is the config's StopRule
(aimo_lib.stopping), the same rule bench's replay measures. The configuration and its presets
are in aimo_lib.presets, the records a solve produces in aimo_lib.results.

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

import sys
import time
import traceback

from .competitions import get_competition
from .dialects import Dialect, get_dialect
from .drivers import run_async, run_rounds
from .engines import GenerationParams, as_engine
from .pools import prestarted_pool
from .presets import SolverConfig
from .prompts import problem_statement, verification_problem
from .results import Sample, SolveResult, Status
from .sandbox import Sandbox
from .step import Action, Run, Steps
from .voting import Vote, tally, vote

__all__ = ["Solver"]

# A time limit longer than this is no limit: waits cannot take one past threading.TIMEOUT_MAX
# (an OverflowError), and `--time-limit inf` means none.
_NO_LIMIT_S = 365 * 86400.0



def first_prompt(cfg: SolverConfig, dialect: Dialect, problem: str, engine: object) -> str:
    """The prompt every sample of a problem starts from: the problem with the competition's
    answer rules (and the check-before-boxing list) as the config states them, in the dialect's
    format (training data rendered for a model must use this too)."""
    stated = problem_statement(
        problem, get_competition(cfg.competition).answer_instruction
        if cfg.state_answer_rules else None, cfg.check_before_boxing)
    return dialect.prompt(cfg.prompt_template, stated, engine)


class Solver:
    """Runs SC-TIR on one problem at a time; safe to call from any thread (not only main)."""

    def __init__(self, engine, sandbox: Sandbox, config: SolverConfig | None = None):
        self.engine, self.sandbox = as_engine(engine), sandbox
        self.config = config or SolverConfig()
        self.config.rules  # noqa: B018 - validate the competition name now
        # Code runs happen on this pool; blocking generate calls on daemon threads of their
        # own (a call that never returns must not hold up the interpreter's exit).
        self.pool = prestarted_pool(max(8, self.config.num_samples), "solver")
        # Extra stop strings need an engine that says which stop string it hit.
        names = self.engine.names_stop_strings
        dialect = get_dialect(self.config.dialect, self.config.reasoning_effort,
                              self.config.stop_at_boxed and names)
        stops = dialect.stops(self.config.stop_at_boxed and names,
                              self.config.stop_at_code_end and names)
        self.steps = Steps(self.config, dialect, self.engine, stops, self._close_session)
        self._max_len = self.engine.max_model_len
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
        run = Run(str(problem), "", [Sample(i) for i in range(cfg.num_samples)], start,
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

    def tally(self, samples: list[Sample]) -> Vote:
        """The final vote over these samples under this solver's config (aimo_lib.voting)."""
        return tally(samples, self.config)

    def _drive(self, run: Run, problem: str) -> None:
        """Render the prompt and generate the run's samples to the end."""
        cfg = self.config
        run.prompt = first_prompt(cfg, self.steps.dialect, problem, self.engine)
        if self.config.continue_from_ids and self.engine.accepts_token_ids:
            run.prompt_ids = list(self.engine.tokenize(run.prompt, special=True))
            for s in run.samples:
                s.ids = list(run.prompt_ids)
        (run_async if self.pipeline == "async" else run_rounds)(self, run)

    # ------------------------------------------------------------ adaptive retry

    def _retry_candidates(self, run: Run) -> list[int] | None:
        """The answers a second wave is asked to check, most voted first; None: no second
        wave (off, a consensus, or too little time left)."""
        cfg = self.config
        if cfg.retry_samples < 1 or run.stopped_early or self.out_of_time(run):
            return None
        if run.deadline is not None:  # time for a wave: at least half what the first took
            now = time.monotonic()
            if run.deadline - now < 0.5 * (now - run.start):
                return None
        counts = vote([s.answer for s in run.samples], rules=cfg.rules).votes
        if max(counts.values(), default=0) >= cfg.retry_below * len(run.samples):
            return None
        return sorted(counts, key=lambda a: -counts[a])[:cfg.retry_candidates]

    def _second_wave(self, run: Run, candidates: list[int]) -> None:
        """retry_samples more samples, prompted with the candidates; voted with the first."""
        cfg = self.config
        first = len(run.samples)
        wave = Run(run.problem, "", [Sample(first + i, wave=1)
                                      for i in range(cfg.retry_samples)],
                    run.start, run.deadline, prior=list(run.samples))
        run.waves.append(wave)
        run.samples += wave.samples  # closed, finished and voted with the first wave's
        try:
            self._drive(wave, verification_problem(run.problem, candidates))
        finally:
            run.stopped_early |= wave.stopped_early
            run.timed_out |= wave.timed_out

    # ------------------------------------------------------------ stopping and voting

    def out_of_time(self, run: Run) -> bool:
        if run.deadline is not None and time.monotonic() >= run.deadline:
            run.timed_out = True
        return run.timed_out

    def consensus(self, run: Run, pending: int) -> bool:
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
        counted = {a: int(c) for a, c in counts.votes.items()}
        if cfg.early_stop.should_stop(counted, pending) and (
                self.tally(samples).answer == counts.answer):
            run.stopped_early = True
        return run.stopped_early

    def _finish_stragglers(self, run: Run) -> None:
        now = time.monotonic() - run.start
        for s in run.samples:
            if s.status == Status.RUNNING:
                s.status = (Status.ANSWERED if s.answer is not None else  # kept answered ones
                            Status.CANCELLED if run.stopped_early else
                            Status.TIMEOUT if run.timed_out else Status.EXHAUSTED)
                s.elapsed_s = now

    def prompt(self, run: Run, s: Sample) -> str | list[int]:
        """What the sample's next request continues: its token ids, else its text."""
        return list(s.ids) if s.ids is not None else run.prompt + s.text

    def params(self, run: Run, s: Sample, kind: Action) -> GenerationParams | None:
        """The request's parameters; None when the sample's context is full (it then ends,
        and its answer, if it has one, still counts)."""
        cfg = self.config
        seed = cfg.seed * 1_000_003 + s.steps * 10_007 + s.index * 7 + s.answer_tries
        max_tokens = cfg.answer_max_tokens if kind is Action.ANSWER else cfg.max_new_tokens
        limits = []  # (tokens left, the status a sample cut there ends with, why)
        if (room := self._room(run, s)) is not None:
            limits.append((room, Status.CONTEXT_FULL,
                           f"the context ({self._max_len} tokens) is full"))
        if cfg.sample_max_tokens is not None:
            limits.append((cfg.sample_max_tokens - s.tokens, Status.EXHAUSTED,
                           f"its budget of {cfg.sample_max_tokens} tokens is spent"))
        s.capped = None
        for left, status, why in sorted(limits):
            if left < 1:
                self.steps.end(run, s, status, why)
                return None
            if left <= max_tokens:
                max_tokens, s.capped = left, status
        common = dict(max_tokens=max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                      seed=seed, skip_special_tokens=self.steps.dialect.skip_special_tokens,
                      logprobs=cfg.logprobs_top_k if self.engine.supports_logprobs else 0)
        if kind is Action.ANSWER:  # the rest of an answer the model opened: up to its "}"
            return GenerationParams(stop=("}",), **common)
        return GenerationParams(stop=self.steps.stops, include_stop_str_in_output=True,
                                **common)

    def _room(self, run: Run, s: Sample) -> int | None:
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

    def _result(self, run: Run) -> SolveResult:
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

    def _close_session(self, s: Sample) -> None:
        if s.session is not None:
            session, s.session = s.session, None
            self.pool.submit(session.close)  # may wait for a block still running


def _deadline(start: float, time_limit_s: float | None) -> float | None:
    """The monotonic deadline of a limit: None for no limit (None, inf, or more than a year),
    `start` for a limit of zero, a negative one or NaN (answer at once)."""
    if time_limit_s is None or time_limit_s >= _NO_LIMIT_S:
        return None
    return start + (time_limit_s if time_limit_s > 0 else 0.0)  # NaN > 0 is False
