"""What solving a problem produced: each sample's trace (`Sample`, its `CodeCall`s) and the
problem's `SolveResult`, with their JSON records."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

__all__ = ["CodeCall", "Sample", "SolveResult", "Status", "clean_entropies", "fallback_cause",
           "model_answer"]

# A token's top-k entropy is at most log(k) nats (about 3 for k=20); past this it is garbage.
MAX_ENTROPY = 100.0


@dataclass
class CodeCall:
    code: str
    status: str  # ExecutionResult.status
    output: str  # what the model was shown
    duration_s: float


class Status(str, Enum):
    """How a sample stands: running, or how it ended. A str, so records hold the plain name."""

    RUNNING = "running"
    ANSWERED = "answered"  # its answer counts (also one cut by a cap after answering)
    PRUNED = "pruned"  # no code, or no tool call nor answer, and restart_on_fail is off
    HALLUCINATED = "hallucinated"  # it claimed an answer without ever running code
    EXHAUSTED = "exhausted"  # no step, or none of its token budget, left
    CONTEXT_FULL = "context_full"  # the model's context is full
    TIMEOUT = "timeout"  # the problem's deadline cut it
    CANCELLED = "cancelled"  # early stop: the vote was settled without it
    ERROR = "error"  # its requests failed, or processing its text broke: see Sample.error

    def __str__(self) -> str:  # the name in messages and f-strings on every Python
        return self.value


@dataclass
class Sample:
    index: int
    text: str = ""  # everything generated after the prompt, tool outputs included
    status: Status = Status.RUNNING
    raw_answer: str | None = None
    answer: int | None = None  # valid under the competition's rules, else None
    code_calls: list[CodeCall] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None  # of the last generation
    steps: int = 0  # generation steps taken (restarts do not reset it)
    restarts: int = 0
    elapsed_s: float = 0.0
    error: str | None = None  # why the sample failed (an exception's type and message)
    wave: int = 0  # 1: a second-wave sample (adaptive retry), prompted with the candidates
    # mean token entropy (nats) of all it generated, and of its last entropy_tail_tokens
    # tokens; None without logprobs
    mean_entropy: float | None = None
    tail_entropy: float | None = None
    # Live state, not part of the record:
    entropies: list[float] = field(default_factory=list, repr=False)
    entropy_total: float = field(default=0.0, repr=False)  # sum(entropies), kept as they come
    session: Any = field(default=None, repr=False)
    ids: list[int] | None = field(default=None, repr=False)
    answer_tries: int = field(default=0, repr=False)
    resumes: int = field(default=0, repr=False)  # continuations within this step
    retried: bool = field(default=False, repr=False)  # a transient failure was retried
    # this step's max_tokens is what is left (CONTEXT_FULL: of the context, EXHAUSTED: of the
    # sample's token budget); cut there, the sample ends with that status
    capped: Status | None = field(default=None, repr=False)

    def record(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("session", "ids", "answer_tries", "resumes", "retried",
                                 "capped", "entropies", "entropy_total")}
        out["code_calls"] = [asdict(c) for c in self.code_calls]
        return out


@dataclass
class SolveResult:
    problem: str
    answer: int | None
    votes: dict[int, float]
    fallback: bool  # True: no sample gave a valid answer; `answer` is the configured fallback
    stopped_early: bool  # consensus reached; the remaining samples were cancelled
    samples: list[Sample]
    tokens_generated: int
    elapsed_s: float
    preset: str = ""
    timed_out: bool = False  # the deadline cancelled generation
    error: str | None = None  # a traceback when solving broke down (the answer is still valid)
    prompt: str = ""  # the rendered prompt every sample continued

    @property
    def engine_failed(self) -> bool:
        """Every sample's requests failed (a dead engine, or a broken set-up)."""
        return bool(self.samples) and all(s.status == "error" for s in self.samples)

    @property
    def retried(self) -> bool:
        """A second wave ran (adaptive retry: the first had no consensus)."""
        return any(s.wave for s in self.samples)

    @property
    def nothing_back(self) -> bool:
        """The deadline passed with no request completed: a hung engine, or steps longer
        than the time limit (engine_health.probe tells which)."""
        return self.timed_out and self.tokens_generated == 0

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["votes"] = {str(k): v for k, v in self.votes.items()}
        d["samples"] = [s.record() for s in self.samples]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def clean_entropies(values: object) -> list[float]:
    """The token entropies an engine gave, without what cannot be one: None, NaN, +-inf,
    negatives, values past MAX_ENTROPY (a broken engine's, or a server's, garbage would
    otherwise poison the vote). Anything but a list or tuple gives none."""
    if not isinstance(values, (list, tuple)):
        return []
    return [float(h) for h in values
            if isinstance(h, (int, float)) and not isinstance(h, bool)
            and 0.0 <= h <= MAX_ENTROPY]


# ---------------------------------------------------------------- reading records back


def model_answer(result: object) -> int | None:
    """A solve's answer (a SolveResult.to_dict() record) when one of its samples produced it;
    None for a fallback: no sample gave a valid answer, or solving failed. The vote's flag
    alone is not trusted: the answer must be a sample's."""
    if not isinstance(result, dict) or result.get("fallback"):
        return None
    answer, samples = result.get("answer"), result.get("samples")
    if not isinstance(answer, int) or isinstance(answer, bool) or not isinstance(samples, list):
        return None
    return answer if any(isinstance(s, dict) and s.get("answer") == answer
                         for s in samples) else None


# Why samples ended without an answer, and the settings that govern it (by Sample.status).
_ENDED = {
    "timeout": "were cut by the time limit (TIME_LIMIT_S, or TOTAL_HOURS's share of it)",
    "context_full": "filled the model's context (its max_model_len; MAX_NEW_TOKENS)",
    "exhausted": "spent their steps or tokens without an answer (MAX_ROUNDS, MAX_NEW_TOKENS, "
                 "SAMPLE_MAX_TOKENS)",
    "pruned": "wrote neither code nor an answer (the model does not follow PROMPT_TEMPLATE "
              "and DIALECT's format)",
    "hallucinated": "answered without running code, which DIALECT discards",
    "cancelled": "were cancelled by the early stop (EARLY_STOP)",
    "answered": "answered outside the competition's answer range",
    "running": "never finished",
}


def fallback_cause(record: object) -> str | None:
    """Why a run record's answer ({"answer", "failed", "error", "result"}, as Runner writes
    them) is a fallback, in a line that names the setting or the fault; None when a sample
    answered it."""
    if not isinstance(record, dict):
        return "a malformed record"
    result = record.get("result") if isinstance(record.get("result"), dict) else {}
    if record.get("failed") or record.get("error"):
        lines = str(record.get("error") or "solving failed").strip().splitlines() or [""]
        return f"solving failed: {lines[-1][:300]}"
    if model_answer(result) is not None:
        return None
    samples = [s for s in result.get("samples") or [] if isinstance(s, dict)]
    if not samples:
        return "no sample ran"
    if result.get("timed_out") and not result.get("tokens_generated"):
        return ("no request completed before the time limit (TIME_LIMIT_S, TOTAL_HOURS; or "
                "a hung engine)")
    status, n = Counter(str(s.get("status")) for s in samples).most_common(1)[0]
    if status == "error":
        error = Counter(str(s.get("error")) for s in samples if s.get("status") == "error")
        return f"{n} of {len(samples)} samples failed: {error.most_common(1)[0][0][:300]}"
    return f"{n} of {len(samples)} samples {_ENDED.get(status, status)}"
