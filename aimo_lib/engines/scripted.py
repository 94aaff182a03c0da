"""ScriptedEngine: a deterministic test double driven by a Python function."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .base import (
    Completion,
    ContextLengthError,
    GenerationParams,
    PoolEngine,
    Request,
    cut_at_stop,
    per_prompt,
)


class ScriptedEngine(PoolEngine):
    """Deterministic test double: `fn(prompt, k)` returns the raw continuation of `prompt`.

    `k` counts how many times this exact prompt text was submitted before (0, 1, ...), so N
    identical first prompts can get N different completions. The continuation is cut at the
    first stop string (kept when the params say so) and at max_tokens, where a token is a
    whitespace-separated word. `delay_s` simulates latency per request (seconds, or a function
    of the completion's token count); like a real engine, a request stops early when it is
    aborted or its deadline passes (it then returns no text, finish_reason "length"), and
    close() ends every request still waiting (no thread outlives the engine's use).
    """

    supports_deadline = True

    def __init__(self, fn: Callable[[str, int], str],
                 delay_s: float | Callable[[int], float] = 0.0, max_concurrency: int = 64,
                 max_model_len: int | None = None,
                 entropy: Callable[[str], float] | None = None):
        self.fn, self.delay_s = fn, delay_s
        self.entropy = entropy  # a completion's text -> the entropy of each of its tokens
        self.supports_logprobs = entropy is not None
        self.max_model_len = max_model_len  # in words, like its tokens
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="scripted")
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._waiting: set[threading.Event] = set()  # what close() sets
        self._closed = False
        self.calls = 0  # number of requests served

    def _sleep(self, seconds: float, aborted: threading.Event | None) -> bool:
        """Wait `seconds` as a request; True when it was aborted or the engine closed."""
        event = aborted or threading.Event()
        with self._lock:
            if self._closed:
                return True
            self._waiting.add(event)
        try:
            return event.wait(seconds)
        finally:
            with self._lock:
                self._waiting.discard(event)

    def close(self) -> None:
        with self._lock:
            self._closed, waiting = True, list(self._waiting)
        for event in waiting:
            event.set()
        super().close()

    def _one(self, prompt: str, p: GenerationParams, deadline: float | None = None,
             aborted: threading.Event | None = None) -> Completion:
        with self._lock:
            k = self._seen.get(prompt, 0)
            self._seen[prompt] = k + 1
            self.calls += 1
        max_tokens = p.max_tokens
        if self.max_model_len is not None:  # like vLLM: refuse a prompt that does not fit
            room = self.max_model_len - self.count_tokens(prompt)
            if room < 1:
                raise ContextLengthError(f"prompt of {self.count_tokens(prompt)} tokens; the "
                                         f"maximum model length is {self.max_model_len}")
            max_tokens = min(max_tokens, room)
        text, stopped = cut_at_stop(self.fn(prompt, k), p)
        words = list(re.finditer(r"\S+", text))
        finish = "stop" if stopped else "eos"
        if len(words) > max_tokens:
            text, finish = text[: words[max_tokens - 1].end()], "length"
        n = min(len(words), max_tokens)
        delay = self.delay_s(n) if callable(self.delay_s) else self.delay_s
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        if delay and self._sleep(delay, aborted):
            return Completion("", "length", 0)  # aborted mid-generation
        if deadline is not None and time.monotonic() >= deadline and delay < (
                self.delay_s(n) if callable(self.delay_s) else self.delay_s):
            return Completion("", "length", 0)  # cut by the deadline
        entropies = [self.entropy(text)] * n if self.entropy and p.logprobs > 0 else None
        return Completion(text, finish, n, entropies=entropies)

    @staticmethod
    def count_tokens(text: str) -> int:
        return len(text.split())

    def generate(self, prompts, params, deadline: float | None = None) -> list[Completion]:
        params = per_prompt(prompts, params)
        return [self._one(pr, p, deadline) for pr, p in zip(prompts, params, strict=True)]

    def submit(self, prompt: str, params: GenerationParams) -> Request:
        request = Request(Future())  # its event stops the simulated generation
        request.future = self._schedule(self._one, prompt, params, None, request.cancelled)
        return request
