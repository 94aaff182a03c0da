"""One sample's step: the per-sample state machine of SC-TIR.

A sample is generated in steps. Each request's outcome goes through `Steps.take`, which
updates the sample and names its next `Action`; the drivers (aimo_lib.drivers) carry it out:

    outcome -> take:  cut by the deadline                -> DONE (the solver marks it)
                      failed, or the context is full     -> DONE  (ERROR, CONTEXT_FULL)
                      text -> on_generated:
                          special tokens stripped        -> DONE  (ERROR, said once)
                          a stop string that meant none  -> RESUME
                          an answer opened, not closed   -> ANSWER
                          else decide:
                              no code / no call, nothing -> restart (STEP) or DONE (PRUNED)
                              an answer                  -> DONE (ANSWERED) or CONTINUE
                              an answer, code never run  -> DONE (HALLUCINATED)
                              a tool call                -> EXECUTE
                              no step or tokens left     -> DONE (EXHAUSTED / a cap)

How a transcript reads is the dialect's (aimo_lib.dialects); the machine is the same for all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .engines import ContextLengthError
from .results import Sample, Status, clean_entropies

__all__ = ["Action", "Run", "Steps"]

_MAX_RESUMES = 8  # continuations of one step (a stop string that meant nothing)
_MAX_ANSWER_TRIES = 4  # continuations to close an answer's nested braces


class Action(Enum):
    """What a sample does next; STEP, ANSWER and RESUME are also the kinds of request."""

    STEP = "step"  # generate the next step
    CONTINUE = "continue"  # answered, but keep_answered: generate the next step all the same
    ANSWER = "answer"  # generate the rest of an opened \\boxed{ (up to its "}")
    RESUME = "resume"  # carry the same step on
    EXECUTE = "execute"  # run the tool call; then STEP
    DONE = "done"  # the sample ended (its status says how), or the deadline cut it


@dataclass
class Run:
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
    waves: list[Run] = field(default_factory=list)  # later waves, run after this one


class Steps:
    """The transitions, for one solver: its config, dialect, engine and stop strings."""

    def __init__(self, config, dialect, engine, stops: tuple[str, ...],
                 close_session: Callable[[Sample], None]):
        self.config, self.dialect, self.engine, self.stops = config, dialect, engine, stops
        self.close_session = close_session
        self._said: set[str] = set()

    def take(self, run: Run, s: Sample, outcome, kind: Action) -> Action:
        """One request's outcome: a Completion, the exception that failed it, or None (the
        deadline cut it)."""
        if outcome is None:
            return Action.DONE
        if isinstance(outcome, ContextLengthError):
            return self.end(run, s, Status.CONTEXT_FULL, str(outcome)[:300])
        if isinstance(outcome, BaseException):
            return self.end(run, s, Status.ERROR, f"{type(outcome).__name__}: {outcome}"[:300])
        return self.guard(run, s, lambda: self.on_generated(run, s, outcome, kind))

    def guard(self, run: Run, s: Sample, fn: Callable[[], Action | None]) -> Action:
        """fn() for one sample; whatever it raises fails that sample only."""
        try:
            return fn() or Action.DONE
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - one sample's breakdown, not the problem's
            return self.end(run, s, Status.ERROR, f"{type(exc).__name__}: {exc}"[:300])

    def end(self, run: Run, s: Sample, status: Status | None = None,
            error: str | None = None) -> Action:
        if status is not None:
            s.status, s.error = status, error
        s.elapsed_s = time.monotonic() - run.start
        self.close_session(s)
        return Action.DONE

    def on_generated(self, run: Run, s: Sample, c, kind: Action) -> Action:
        """Add a completion to the sample and read what it did."""
        text = c.text if isinstance(c.text, str) else ""
        s.text += text
        s.tokens += int(c.num_tokens or 0)
        s.finish_reason = c.finish_reason
        if c.entropies:
            self.add_entropies(s, clean_entropies(c.entropies))
        if s.ids is not None:
            s.ids += list(c.token_ids) if c.token_ids is not None else self.engine.tokenize(text)
        if kind is Action.STEP:
            s.steps, s.resumes = s.steps + 1, 0
            if self.dialect.lost_special_tokens(text):
                return self.end(run, s, Status.ERROR, self._stripped())
        added, event = self.dialect.after(s.text, c.finish_reason, kind.value, self.stops)
        if added:
            self.append(s, added)  # e.g. the output fence after a closed code block
        if event == "resume" and s.resumes < _MAX_RESUMES:
            s.resumes += 1
            return Action.RESUME
        if event == "answer":
            s.answer_tries = 0
            return Action.ANSWER
        if event == "answer_unclosed" and s.answer_tries < _MAX_ANSWER_TRIES:
            s.answer_tries += 1
            return Action.ANSWER
        action = self.decide(run, s, last_step=s.steps >= self.config.max_rounds)
        if s.status != Status.RUNNING:
            self.end(run, s)
        return action

    def decide(self, run: Run, s: Sample, last_step: bool) -> Action:
        """What a finished step leads to, in the seed notebook's order."""
        cfg = self.config
        reading = self.dialect.read(run.prompt, s.text)
        if reading.kind == "no_code":
            return self.fail(run, s)  # it never wrote code: the seed discards even a correct answer
        if reading.kind == "unverified":
            s.status = Status.HALLUCINATED
            return Action.DONE
        if reading.kind == "answer":
            s.raw_answer = reading.raw
            s.answer = self.dialect.to_int(reading.raw, cfg.rules)
            if cfg.keep_answered and not last_step:
                return Action.CONTINUE  # the seed: generated again, its answer re-read
            s.status = Status.ANSWERED
            return Action.DONE
        if last_step:
            s.status = Status.EXHAUSTED  # no step left to show it the output
            return Action.DONE
        if s.capped and s.finish_reason == "length":
            s.status = s.capped  # a restart would not help it: end it (an answer counts)
            return Action.DONE
        if reading.kind != "call":  # ended with neither a tool call nor an answer
            return self.fail(run, s)
        return Action.EXECUTE

    def fail(self, run: Run, s: Sample) -> Action:
        """Restart the sample from the prompt, or prune it (restart_on_fail off)."""
        if not self.config.restart_on_fail:
            s.status = Status.PRUNED
            return Action.DONE
        self.close_session(s)
        s.text, s.code_calls, s.restarts = "", [], s.restarts + 1
        self.add_entropies(s, None)  # the confidence of the attempt that answers
        if s.ids is not None:
            s.ids = list(run.prompt_ids)
        if s.steps < self.config.max_rounds:
            return Action.STEP
        s.status = Status.EXHAUSTED  # restarted in its last step: nothing left to generate
        return Action.DONE

    def append(self, s: Sample, text: str) -> None:
        """Add text the model did not generate (tool output, a fence) to a sample."""
        s.text += text
        if s.ids is not None:
            s.ids += self.engine.tokenize(text)

    def add_entropies(self, s: Sample, entropies: list[float] | None) -> None:
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

    def _stripped(self) -> str:
        """Read on, every step would read as nothing, for ever: say why, once, loudly."""
        why = (f"the engine's text has none of the {self.dialect.name} format's special "
               "tokens: the engine or server strips them (skip_special_tokens), so no tool "
               "call and no answer can be read. Serve it so that they are kept: vLLM and "
               "OpenAI-compatible /v1/completions servers take skip_special_tokens=false per "
               "request (the solver asks for it); a chat endpoint, or a server that ignores "
               "it, cannot serve this format")
        if "special tokens" not in self._said:
            self._said.add("special tokens")
            print(f"[aimo] !!! {why}", file=sys.stderr, flush=True)
        return why
