"""The engine protocol: what every back-end takes and returns, and what it declares it can do.

    engine.generate(prompts, params, deadline=None) -> list[Completion]   (batched, blocking)
    engine.submit(prompt, params) -> Request    (one request; where `supports_async`)
    engine.abort(request)                       (stop a submitted request)

`params` is one GenerationParams for all prompts or one per prompt (per-sample seeds). What
else an engine can do it declares as capabilities, each with a default on `Engine` that is
right for an engine that says nothing: `supports_async` (submit/abort run requests
independently), `supports_deadline` (generate stops at `deadline` itself), `accepts_token_ids`
(`tokenize(text, special)` plus token-id prompts: a sample continues without re-tokenising its
text), `names_stop_strings` (a completion says which stop string ended it), `max_model_len`
and `count_tokens(text)` (the context length, so each step's max_tokens is capped to what is
left), `supports_logprobs` (Completion.entropies when GenerationParams.logprobs asks), and
`has_chat_template`/`apply_chat_template`. `as_engine(obj)` gives any object with a
`generate(prompts, params)` method those defaults. A prompt over the context length raises
ContextLengthError. Every engine has `close()` and is a context manager.
"""

from __future__ import annotations

import math
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field


class EngineError(RuntimeError):
    """A generation back-end failed or is misconfigured."""


class ContextLengthError(EngineError, ValueError):
    """The prompt (with the tokens asked for) does not fit the model's context length."""


# How servers say a prompt does not fit: the problem's fault, not the engine's.
_CONTEXT_WORDS = (
    "maximum model length", "max_model_len",  # vLLM
    "maximum context length", "context_length_exceeded",  # OpenAI (and vLLM's server)
    "longer than the model's context length", "context length",  # SGLang
    "exceeds the available context size", "exceed_context_size", "context size",  # llama.cpp
    "too long",
)


def is_context_error(message: str) -> bool:
    """vLLM's, SGLang's, llama.cpp's and OpenAI's words for a prompt over the context."""
    m = message.lower()
    return any(k in m for k in _CONTEXT_WORDS)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters for one request (the subset every back-end understands)."""

    max_tokens: int = 2048
    temperature: float = 0.8
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = True
    seed: int | None = None
    # False keeps special tokens in the text: formats that are made of them (harmony) need it
    skip_special_tokens: bool = True
    # > 0: each generated token's top-k log-probabilities, kept as its entropy
    # (Completion.entropies) where the engine supports_logprobs
    logprobs: int = 0


@dataclass
class Completion:
    """One generated continuation of a prompt (the prompt itself is not included)."""

    text: str
    finish_reason: str  # "stop" (a stop string), "length" (max_tokens) or "eos"
    num_tokens: int
    token_ids: list[int] | None = field(default=None, repr=False)
    # per generated token: the entropy (nats) of its top-k distribution; None if not asked
    # for or not given by the engine
    entropies: list[float] | None = field(default=None, repr=False)


@dataclass(eq=False)
class Request:
    """One submitted request: wait on `future` (its result is a Completion, or the exception
    that failed it); hand the Request to `engine.abort()` to stop it."""

    future: Future
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the back-end's name for it
    replica: int | None = None  # which engine of a ReplicaEngine serves it
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by abort()

    def result(self, timeout: float | None = None) -> Completion:
        return self.future.result(timeout)


class Engine:
    """The protocol every engine follows, with each capability's default: what may be
    assumed of an engine that says nothing about it."""

    supports_async: bool = False  # submit()/abort() run requests independently
    supports_deadline: bool = False  # generate(..., deadline=) stops at the deadline itself
    supports_logprobs: bool = False  # fills Completion.entropies when the params ask
    accepts_token_ids: bool = False  # tokenize(), and prompts given as token-id lists
    names_stop_strings: bool = True  # a completion tells which stop string ended it
    max_model_len: int | None = None  # the context length, where known
    has_chat_template: bool = False

    def generate(self, prompts: Sequence, params: GenerationParams | Sequence[GenerationParams],
                 deadline: float | None = None) -> list[Completion]:
        raise NotImplementedError

    def submit(self, prompt, params: GenerationParams) -> Request:
        raise EngineError(f"{type(self).__name__} runs batches only (generate); it has no "
                          "submit()")

    def abort(self, request: Request) -> None:
        """Stop a submitted request; a request already finished is left as it is."""
        request.cancelled.set()
        request.future.cancel()

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        raise EngineError(f"{type(self).__name__} does not tokenize (accepts_token_ids is "
                          "False)")

    def count_tokens(self, text: str) -> int | None:
        """The prompt's length in tokens; None where the engine cannot count them."""
        return None

    def apply_chat_template(self, messages: list[dict]) -> str:
        raise EngineError(f"{type(self).__name__} has no chat template")

    def close(self) -> None:
        """Free the engine's resources (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Adapted(Engine):
    """Any object with generate(prompts, params): the capabilities it declares as attributes,
    the defaults for the rest. Its deadline, if it knows none, the solver keeps itself."""

    # Capabilities taken as declared; accepts_token_ids only with the tokenize() it needs.
    _DECLARED = ("supports_deadline", "supports_logprobs", "names_stop_strings",
                 "max_model_len", "has_chat_template")

    def __init__(self, obj):
        self.obj = obj
        for name in self._DECLARED:
            if hasattr(obj, name):
                setattr(self, name, getattr(obj, name))
        for name in ("apply_chat_template", "count_tokens", "close", "tokenize"):
            if callable(getattr(obj, name, None)):
                setattr(self, name, getattr(obj, name))
        self.accepts_token_ids = bool(getattr(obj, "accepts_token_ids", False)) and callable(
            getattr(obj, "tokenize", None))

    def generate(self, prompts, params, deadline=None) -> list[Completion]:
        if self.supports_deadline:
            return self.obj.generate(prompts, params, deadline=deadline)
        return self.obj.generate(prompts, params)


def as_engine(obj) -> Engine:
    """`obj` as an Engine: itself if it is one, else wrapped with the capability defaults."""
    if isinstance(obj, Engine):
        return obj
    if not callable(getattr(obj, "generate", None)):
        raise TypeError(f"{type(obj).__name__} is not an engine: it has no generate() method")
    return _Adapted(obj)


def topk_entropy(logprobs) -> float:
    """The entropy (nats) of one position's top-k log-probabilities, renormalised over the k
    (the mass outside them is unknown): 0 when one token has it all, log k when all are
    equal. The confidence signal of the vote weights."""
    lps = [lp for lp in logprobs if lp is not None and math.isfinite(lp)]
    if not lps:
        return 0.0
    top = max(lps)
    ps = [math.exp(lp - top) for lp in lps]
    z = sum(ps)
    return max(0.0, -sum(p / z * math.log(p / z) for p in ps if p > 0))


def per_prompt(prompts: Sequence, params) -> list[GenerationParams]:
    if isinstance(params, GenerationParams):
        return [params] * len(prompts)
    params = list(params)
    if len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} GenerationParams")
    return params


def cut_at_stop(text: str, p: GenerationParams) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; returns (text, whether one was found)."""
    hits = [(i, s) for s in p.stop if (i := text.find(s)) >= 0]
    if not hits:
        return text, False
    i, s = min(hits)
    return text[: i + len(s)] if p.include_stop_str_in_output else text[:i], True


class PoolEngine(Engine):
    """submit/abort for engines whose requests are independent blocking calls on a pool."""

    _pool: ThreadPoolExecutor
    supports_async = True

    def _schedule(self, fn: Callable, *args) -> Future:
        """fn(*args) on the pool, as a future that completes even if the engine is closed
        while it waits in the queue."""
        future = self._pool.submit(fn, *args)
        if "_scheduled" not in self.__dict__:
            self._scheduled: weakref.WeakSet = weakref.WeakSet()
        self._scheduled.add(future)
        return future

    def close(self) -> None:
        """Stop accepting requests; those queued are cancelled, and whoever waits on them is
        told (Future.cancel alone does not wake concurrent.futures.wait)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for future in list(self.__dict__.get("_scheduled", ())):
            if future.cancelled():
                try:
                    future.set_running_or_notify_cancel()
                except RuntimeError:  # already told
                    pass

    def submit(self, prompt, params: GenerationParams) -> Request:
        return Request(self._schedule(lambda: self.generate([prompt], params)[0]))
    # abort: Engine's; a request already on the wire finishes, and its result is dropped


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The chat template's text with the generation prompt, ready for this tokenizer: a
    template that writes the BOS itself (as the Numina template does) loses it here when the
    tokenizer adds one on encoding, so the model never sees two."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text


def align_token_ids(text: str, ids: list[int], decode: Callable[[list[int]], str],
                    encode: Callable[[str], list[int]]) -> list[int]:
    """Token ids that decode to exactly `text`: `ids` when they already do; else the longest
    prefix of `ids` whose decoding starts `text`, plus `text`'s rest tokenised (a stop string
    cut inside a token, a trailing EOS, a special token the text leaves out).

    The prefix is found with O(log n) decodes: the usual cut (the last token or two) at once,
    one early in the text (a dropped special token) by halving, so a 16k-token step costs
    milliseconds, not the n decodes of trying every prefix."""
    if not ids:
        return encode(text) if text else []
    if decode(ids) == text:
        return ids

    def fits(k: int) -> bool:
        head = decode(ids[:k])
        return text.startswith(head) and "\ufffd" not in head[-1:]

    # Gallop back from the end to a prefix that fits, then halve the gap above it: the largest
    # fitting k (prefixes of a fitting prefix fit, but for a split multi-byte character).
    step, bad, good = 1, len(ids), None
    while good is None:
        k = max(0, len(ids) - step)
        if fits(k):
            good = k
        else:  # k = 0 always fits: the loop ends
            bad, step = k, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    head = decode(ids[:good])
    return ids[:good] + (encode(text[len(head):]) if len(head) < len(text) else [])
