"""Fault injection: a simulated engine that writes hostile text and fails in the ways real
engines fail, to check that a pipeline survives them (tests/test_chaos.py, bench/chaos.py).

    engine = ChaosEngine(seed=3, p_raise=0.1, p_stall=0.05)
    Solver(engine, sandbox, config).solve(problem, time_limit_s=2)   # must not raise

Each request draws, from `seed` and the request itself (so a run is reproducible), either a
failure (one of several exception types, raised at submit or from the future), a stall (a
request that outlives any deadline and ignores it unless aborted or the engine is closed),
None instead of a completion (p_none), or a continuation built from hostile fragments: broken
and unclosed fences, ```py/```Python blocks, runaway, crashing and flooding code,
empty/huge/negative/fractional boxes, NULs, special tokens; or (p_huge) a huge degenerate text
(DEGENERATE: "\\boxed{" thousands of times, a final message of them, brace floods, fences
without end). With hostile_entropies, the engine declares logprobs and each completion carries
token entropies drawn from HOSTILE_ENTROPIES (NaN, None, +-inf, negative, huge, not a list).
It is a simulation: no model is involved.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import Future

from .base import Completion, ContextLengthError, EngineError
from .scripted import ScriptedEngine

__all__ = ["DEGENERATE", "FRAGMENTS", "HARMONY_FRAGMENTS", "HOSTILE_ENTROPIES", "ChaosEngine"]

FRAGMENTS = (
    # reasoning and answers, good and bad
    "Let me think. ", "So the answer is 42. ", "\\boxed{42}", "\\boxed{7}", "\\boxed{}",
    "\\boxed{-5}", "\\boxed{3.5}", "\\boxed{10^{400}}", "\\boxed{(10^{400})^2}",
    "\\boxed{" + "9" * 5000 + "}", "\\boxed{\\frac{1}{2}}", "\\boxed{99999}", "\\boxed{{{",
    "\\boxed{1}}}", "\\fbox{12}", "The answer is \\boxed{", "final answer: 100000",
    # fences, broken and well formed
    "```", "```python\n", "```py\nprint(2)\n```\n", "```Python\n1+1\n```\n", "```output\n",
    "```python\nprint(6*7)\n```\n```output\n", "```python\nx = 5\n", "\n```\n",
    "```python\nprint('unclosed'", "```output\n```output\n",
    # hostile code
    "```python\nwhile True:\n    pass\n```\n```output\n",
    "```python\nimport os\nos._exit(3)\n```\n```output\n",
    "```python\n1/0\n```\n```output\n",
    "```python\nprint('x' * 10**6)\n```\n```output\n",
    "```python\nimport time\ntime.sleep(60)\n```\n```output\n",
    "```python\nx = bytearray(10**11)\n```\n```output\n",
    # bytes a tokenizer would not expect
    "\x00\x00", "<|im_end|>", "<|endoftext|>", "<|start|>assistant<|channel|>final<|message|>",
    "\ud7ff\u202e", " " * 50,
)

# The same spirit in gpt-oss's harmony format: tool calls well and badly formed, calls that
# never end, tool replies the model forges, channels that do not exist, finals without answers.
_A = "<|start|>assistant"
HARMONY_FRAGMENTS = (
    "<|channel|>analysis<|message|>Let me think.<|end|>", "<|channel|>analysis<|message|>",
    f"{_A}<|channel|>analysis to=python code<|message|>print(6*7)<|call|>",
    f"{_A} to=python<|channel|>analysis code<|message|>x = 6*7\nx<|call|>",
    "<|channel|>analysis to=python<|message|>print(x)<|call|>",
    f"{_A}<|channel|>analysis to=python code<|message|>while True:\n    pass<|call|>",
    f"{_A}<|channel|>analysis to=python code<|message|>import os\nos._exit(3)<|call|>",
    f"{_A}<|channel|>analysis to=python code<|message|>print('x' * 10**6)<|call|>",
    f"{_A}<|channel|>analysis to=python code<|message|>print(1", "to=python", "<|call|>",
    f"{_A}<|channel|>commentary to=functions.lookup<|message|>{{}}<|call|>",
    "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>",
    f"{_A}<|channel|>final<|message|>The answer is \\boxed{{42}}.<|return|>",
    f"{_A}<|channel|>final<|message|>\\boxed{{7}}<|return|>",
    f"{_A}<|channel|>final<|message|>100000<|return|>", "<|channel|>final<|message|>",
    f"{_A}<|channel|>final<|message|>I do not know.<|return|>", "\\boxed{{{", "<|return|>",
    "<|channel|>nonsense<|message|>", "<|message|><|message|>", "<|start|><|start|>", "<|end|>",
    "<|constrain|>json", "\x00", "```python\nprint(2)\n```\n```output\n",
)

# What runaway generation looks like at max_tokens: tens of thousands of characters of one
# pattern, one "word" each (the scripted max_tokens counts words, so they come through whole).
_FINAL = "<|start|>assistant<|channel|>final<|message|>"
DEGENERATE = (
    "\\boxed{" * 6000, "\\fbox{" * 6000, "{" * 40_000, "\\boxed{" + "}" * 40_000,
    "**Answer:**" * 4000, "9" * 40_000, "\\frac{1}{" * 4000,
    "```python" * 4000, "```output" * 4000, "```" * 10_000, "<|start|>" * 6000,
    "<|channel|>final<|message|>" + "\\boxed{" * 6000, _FINAL + "\\boxed{" * 6000,
    _FINAL + "1" * 40_000, "to=python" * 4000, "\x00" * 40_000,
)

# Token entropies a broken engine or server might send (n: the completion's token count).
HOSTILE_ENTROPIES = (
    lambda n: [0.5] * n, lambda n: [0.0] * n, lambda n: [float("nan")] * n,
    lambda n: [None] * n, lambda n: [float("inf")] * n, lambda n: [float("-inf")] * n,
    lambda n: [-800.0] * n, lambda n: [1e308] * n, lambda n: None, lambda n: [],
    lambda n: "not a list", lambda n: [0.1, None, float("nan"), 3.0] * n,
)

_ERRORS = (
    lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
    lambda: ValueError("zip() argument 2 is longer than argument 1"),
    lambda: ContextLengthError("the prompt is longer than the maximum model length"),
    lambda: ConnectionError("connection reset by peer"),
    lambda: TimeoutError("read timed out"),
    lambda: EngineError("HTTP 500: internal server error"),
    lambda: KeyError("choices"),
    lambda: MemoryError("CUDA out of memory"),
)


class ChaosEngine(ScriptedEngine):
    """A simulated hostile engine (see the module docstring). Probabilities per request:
    p_raise (an exception), p_stall (never finishes unless aborted); max_delay_s: latency of
    the others. fragments: what continuations are made of."""

    def __init__(self, seed: int = 0, *, p_raise: float = 0.1, p_stall: float = 0.05,
                 max_delay_s: float = 0.05, fragments: tuple[str, ...] = FRAGMENTS,
                 max_fragments: int = 6, p_none: float = 0.0, p_huge: float = 0.0,
                 hostile_entropies: bool = False, **kwargs):
        self.seed, self.p_raise, self.p_stall, self.p_none = seed, p_raise, p_stall, p_none
        self.fragments, self.max_fragments, self.p_huge = fragments, max_fragments, p_huge
        self.max_delay_s = max_delay_s
        self._latency = random.Random(seed)  # its own: a test's global random stays untouched
        super().__init__(self._text, delay_s=self._delay, **kwargs)
        self.hostile_entropies = self.supports_logprobs = hostile_entropies

    def _rng(self, prompt, k: int, salt: str) -> random.Random:
        key = f"{self.seed}|{salt}|{k}|{prompt if isinstance(prompt, str) else list(prompt)}"
        return random.Random(hashlib.sha256(key.encode("utf-8", "replace")).digest())

    def _text(self, prompt: str, k: int) -> str:
        rng = self._rng(prompt, k, "text")
        text = "".join(rng.choice(self.fragments)
                       for _ in range(rng.randint(0, self.max_fragments)))
        return text + rng.choice(DEGENERATE) if rng.random() < self.p_huge else text

    def _delay(self, n_tokens: int) -> float:
        return self._latency.random() * self.max_delay_s

    def _fate(self, prompt, k: int) -> str:
        r = self._rng(prompt, k, "fate").random()
        for fate, p in (("raise", self.p_raise), ("stall", self.p_stall), ("none", self.p_none)):
            if r < p:
                return fate
            r -= p
        return "ok"

    def _one(self, prompt, p, deadline=None, aborted=None) -> Completion:
        with self._lock:
            k = self._seen.get(f"fate|{prompt}", 0)
            self._seen[f"fate|{prompt}"] = k + 1
        fate = self._fate(prompt, k)
        if fate == "raise":
            raise _ERRORS[self._rng(prompt, k, "error").randrange(len(_ERRORS))]()
        if fate == "stall":  # ignores its deadline: only an abort (or close()) ends it
            self._sleep(3600, aborted)
            return Completion("", "length", 0)
        if fate == "none":
            return None  # type: ignore[return-value]  # what a broken engine returns
        c = super()._one(prompt, p, deadline, aborted)
        if self.hostile_entropies and p.logprobs > 0:
            draw = self._rng(prompt, k, "entropies").choice(HOSTILE_ENTROPIES)
            c.entropies = draw(c.num_tokens)
        return c

    def submit(self, prompt, params) -> Future:
        if self._rng(prompt, 0, "submit").random() < self.p_raise / 4:
            raise ConnectionError("the server closed the connection")  # at submit time
        return super().submit(prompt, params)
