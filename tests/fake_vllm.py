"""A stand-in for the `vllm` package with the documented API surface that VLLMEngine uses
(LLM, SamplingParams, AsyncEngineArgs, AsyncLLMEngine, RequestOutput/CompletionOutput shapes).
It records every call so tests can check the contract. Written from vLLM's docs."""

import asyncio
from types import SimpleNamespace

calls: list[tuple[str, object]] = []


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        calls.append(("SamplingParams", kwargs))


class _Tokenizer:
    """Characters as token ids: enough to check that ids round-trip."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "<chat>" + messages[-1]["content"]


def _text(prompt):
    if isinstance(prompt, dict):
        return "".join(chr(i) for i in prompt["prompt_token_ids"])
    return prompt


def _output(prompt, sp):
    """A RequestOutput whose completion stops at the first stop string, like vLLM."""
    seen = _text(prompt)
    text = ("```python\nprint(1)\n```\n```output\n" if "python" not in seen else
            "1}" if seen.endswith("\\boxed{") else "So \\boxed{1}")
    stops = sp.kwargs.get("stop") or []
    hit = next((s for s in stops if s in text), None)
    if hit is not None:
        cut = text.index(hit) + (len(hit) if sp.kwargs.get("include_stop_str_in_output") else 0)
        text = text[:cut]
    out = SimpleNamespace(text=text, token_ids=[ord(c) for c in text],
                          finish_reason="stop" if hit else "length" if not text else "stop",
                          stop_reason=hit)
    return SimpleNamespace(prompt=prompt, outputs=[out], finished=True)


class LLM:
    def __init__(self, **kwargs):
        calls.append(("LLM", kwargs))

    def generate(self, prompts, sampling_params, use_tqdm=True):
        calls.append(("generate", (list(prompts), use_tqdm)))
        return [_output(p, sp) for p, sp in zip(prompts, sampling_params, strict=True)]

    def get_tokenizer(self):
        return _Tokenizer()


class AsyncEngineArgs:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class AsyncLLMEngine:
    aborted: list[str] = []
    tokenizer = _Tokenizer()

    def __init__(self, args):
        self.args = args

    @classmethod
    def from_engine_args(cls, args):
        calls.append(("AsyncLLMEngine.from_engine_args", args.kwargs))
        return cls(args)

    async def generate(self, prompt, sampling_params, request_id):
        calls.append(("async generate", (prompt, request_id)))
        if "hang" in str(prompt):
            while request_id not in self.aborted:
                await asyncio.sleep(0.01)
            return
        await asyncio.sleep(0.01)
        yield _output(prompt, sampling_params)

    async def abort(self, request_id):
        self.aborted.append(request_id)
