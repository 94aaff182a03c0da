"""OpenAIEngine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI), with bounded
concurrency, retries with backoff and timeouts. This is how to scale out."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request

from ..dialects import OUTPUT_FENCE
from ..pools import prestarted_pool
from .base import (
    Completion,
    ContextLengthError,
    EngineError,
    GenerationParams,
    PoolEngine,
    Request,
    align_token_ids,
    cut_at_stop,
    is_context_error,
    per_prompt,
    render_chat,
    topk_entropy,
)


class OpenAIEngine(PoolEngine):
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
        self._pool = prestarted_pool(max_concurrency, "openai")
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
                    kind = ContextLengthError if is_context_error(
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
    def accepts_token_ids(self) -> bool:
        """Token-id prompts where the served model's tokenizer is readable here (vLLM serving
        a local folder): the completions API takes a list of ids, and vLLM gives back the ids
        it generated (return_token_ids), so a sample's context is the model's own tokens, not
        its text tokenised again."""
        return self.api == "completions" and self._local_tokenizer() is not None

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        tok = self._local_tokenizer()
        if tok is None or self.api != "completions":
            return super().tokenize(text, special)
        return tok(text, add_special_tokens=special)["input_ids"]

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

    def _complete(self, prompt: str | list[int], p: GenerationParams) -> Completion:
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
            body["prompt"] = prompt  # text, or token ids (accepts_token_ids)
            body["return_token_ids"] = True  # vLLM's extension, as above
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
        ids, tok = choice.get("token_ids"), self._local_tokenizer()
        if tok is None or not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
            ids = None  # not given (or no tokenizer to check them): the caller tokenises
        else:  # as VLLMEngine: the ids of exactly the text (a stop string cut mid-token, EOS)
            ids = align_token_ids(text, ids, tok.decode, self.tokenize)
        return Completion(text, reason, usage.get("completion_tokens") or len(text.split()),
                          token_ids=ids,
                          entropies=_openai_entropies(choice.get("logprobs")) if p.logprobs > 0
                          else None)

    def generate(self, prompts, params, deadline=None) -> list[Completion]:
        params = per_prompt(prompts, params)
        return list(self._pool.map(self._complete, prompts, params))

    def submit(self, prompt: str | list[int], params: GenerationParams) -> Request:
        return Request(self._schedule(self._complete, prompt, params))


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
