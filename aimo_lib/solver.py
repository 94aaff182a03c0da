"""SC-TIR: self-consistency over tool-integrated reasoning traces.

    solver = Solver(engine, sandbox, SolverConfig.preset("numina_aimo1", num_samples=8))
    result = solver.solve(problem)          # SolveResult: answer, votes, samples, ...

N samples each alternate reasoning, a ```python block, and that block's ```output, for up to
M rounds; the answers are voted. A round: generate every live sample until it stops at
"```output\\n" or ends; then decide each sample's fate (`_decide`); run the code of the ones
that asked for it; repeat.

Presets: "numina_aimo1" reproduces the AIMO-1 winning notebook rule for rule (see
../shared/REFERENCE.md section 1); "default" is ours (see SolverConfig.preset).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace

from .answers import (
    RULES,
    AnswerRules,
    extract_answer,
    normalize_answer,
    numina_extract_boxed,
    numina_normalize,
    numina_to_int,
    vote,
)
from .engines import GenerationParams
from .prompts import render_prompt
from .sandbox import ExecutionResult, Sandbox

__all__ = ["CodeCall", "Sample", "SolveResult", "Solver", "SolverConfig", "dump_jsonl"]

STOP = "```output\n"
_PYTHON_BLOCK = re.compile(r"```python(.*?)```", re.DOTALL)
_OUTPUT_BLOCK = re.compile(r"```output(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class SolverConfig:
    """Every knob of the decoder. Build one with `SolverConfig.preset(name, **overrides)`."""

    name: str = "default"
    num_samples: int = 16  # N: width (samples voted over)
    max_rounds: int = 4  # M: depth (generation rounds; at most M-1 code executions)
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 2048  # per round
    prompt_template: str = "chatml_tir"
    code_timeout_s: float = 5.0
    max_output_chars: int = 1000  # what the model sees of one execution
    restart_on_fail: bool = True  # a failed sample starts over from the prompt (else pruned)
    # The seed notebook's rules, each a switch so the presets differ only in data:
    code_required: bool = False  # no code -> restart/prune, and code-less answers are pruned
    answer_window: int | None = None  # look for the answer only in the last N characters
    numina_answers: bool = False  # its extraction/normalisation/round(float) filter
    numina_execution: bool = False  # its prelude, print-wrapping, traceback and 200-char cut
    competition: str = "aimo1"  # answer rules: aimo1/aimo2 (mod 1000), aimo3 (0..99999)
    fallback: int | None = 0  # answer when no sample gives a valid one (flagged)
    seed: int = 42

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> SolverConfig:
        """A named preset with field overrides, e.g. preset("numina_aimo1", num_samples=8)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown SolverConfig fields: {sorted(unknown)}")
        return replace(PRESETS[name], **overrides)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_rounds < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples, max_rounds and max_new_tokens must be >= 1")
        if self.code_timeout_s <= 0:
            raise ValueError("code_timeout_s must be positive")

    @property
    def rules(self) -> AnswerRules:
        if self.competition not in RULES:
            raise ValueError(f"competition must be one of {sorted(RULES)}")
        return replace(RULES[self.competition], fallback=self.fallback)


PRESETS = {
    # The submitted AIMO-1 notebook (NuminaMath-7B-TIR, 29/50): N=48, M=4, T=0.8, 2048 tokens.
    "numina_aimo1": SolverConfig(
        name="numina_aimo1", num_samples=48, max_rounds=4, temperature=0.8, max_new_tokens=2048,
        prompt_template="numina", code_timeout_s=5.0, restart_on_fail=True, code_required=True,
        answer_window=100, numina_answers=True, numina_execution=True),
    # Ours: real tracebacks and REPL display, answers read anywhere with strict integer rules,
    # and answers from pure reasoning kept.
    "default": SolverConfig(),
}


@dataclass
class CodeCall:
    code: str
    status: str  # ExecutionResult.status
    output: str  # what the model was shown
    duration_s: float


@dataclass
class Sample:
    index: int
    text: str = ""  # everything generated after the prompt, tool outputs included
    status: str = "running"  # running|answered|pruned|hallucinated|exhausted|timeout
    raw_answer: str | None = None
    answer: int | None = None  # valid under the competition's rules, else None
    code_calls: list[CodeCall] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None  # of the last generation
    restarts: int = 0
    elapsed_s: float = 0.0


@dataclass
class SolveResult:
    problem: str
    answer: int | None
    votes: dict[int, float]
    fallback: bool  # True: no sample gave a valid answer; `answer` is the configured fallback
    stopped_early: bool
    samples: list[Sample]
    tokens_generated: int
    elapsed_s: float
    preset: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["votes"] = {str(k): v for k, v in self.votes.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def dump_jsonl(results: Iterable[SolveResult], path: str) -> None:
    """Append results to a JSONL file, one line per problem."""
    with open(path, "a", encoding="utf-8") as f:
        for r in results:
            f.write(r.to_json() + "\n")


class Solver:
    """Runs SC-TIR on one problem at a time. Thread-safe as long as the engine is."""

    def __init__(self, engine, sandbox: Sandbox, config: SolverConfig | None = None):
        self.engine, self.sandbox = engine, sandbox
        self.config = config or SolverConfig()
        self.config.rules  # noqa: B018 - validate the competition name now

    def solve(self, problem: str, time_limit_s: float | None = None) -> SolveResult:
        """Solve one problem. time_limit_s: no new round starts after it has passed."""
        cfg = self.config
        start = time.monotonic()
        deadline = None if time_limit_s is None else start + time_limit_s
        prompt = render_prompt(cfg.prompt_template, problem, self.engine)
        samples = [Sample(i) for i in range(cfg.num_samples)]
        live, out_of_time = list(samples), False
        for step in range(cfg.max_rounds):
            if deadline is not None and time.monotonic() >= deadline:
                out_of_time = True
            if not live or out_of_time:
                break
            params = [self._params(s, step) for s in live]
            completions = self.engine.generate([prompt + s.text for s in live], params)
            to_run: list[tuple[Sample, str]] = []
            for s, c in zip(live, completions, strict=True):
                s.text += c.text
                s.tokens += c.num_tokens
                s.finish_reason = c.finish_reason
                action = self._decide(prompt, s, last_step=step == cfg.max_rounds - 1)
                if action == "execute":
                    code = _PYTHON_BLOCK.findall(s.text)[-1]
                    if not cfg.numina_execution and code.startswith("\n"):
                        code = code[1:]  # so line numbers match the block as the model sees it
                    to_run.append((s, code))
                elif action == "restart":
                    s.text, s.code_calls, s.restarts = "", [], s.restarts + 1
                if s.status != "running":
                    s.elapsed_s = time.monotonic() - start
            self._execute(to_run)
            live = [s for s in live if s.status == "running"]
        for s in live:  # out of rounds (a restart in the last one) or out of time
            s.status = "timeout" if out_of_time else "exhausted"
            s.elapsed_s = time.monotonic() - start
        return self._result(problem, samples, start)

    # ------------------------------------------------------------ one sample's fate

    def _decide(self, prompt: str, s: Sample, last_step: bool) -> str:
        """"execute", "restart", or "done" (s.status set). The order is the seed notebook's."""
        cfg = self.config
        full = prompt + s.text if cfg.code_required else s.text
        if cfg.code_required and not _PYTHON_BLOCK.search(full):
            return self._fail(s)  # it never wrote code: the seed discards even a correct answer
        stopped_for_output = s.text.endswith(STOP)
        if not stopped_for_output:
            window = full[-cfg.answer_window :] if cfg.answer_window else s.text
            raw = self._find_answer(window)
            if raw is not None:
                if cfg.code_required and not _OUTPUT_BLOCK.search(full):
                    s.status = "hallucinated"  # claims an answer without ever running code
                    return "done"
                # Answered samples leave the batch (REFERENCE: the submitted rule set).
                s.status, s.raw_answer = "answered", raw
                s.answer = (numina_to_int(raw) if cfg.numina_answers
                            else normalize_answer(raw, cfg.rules))
                return "done"
        if last_step:
            s.status = "exhausted"  # no round left to show it the output
            return "done"
        if not stopped_for_output:
            return self._fail(s)  # ended (EOS or max tokens) with neither code nor answer
        return "execute"

    def _fail(self, s: Sample) -> str:
        if self.config.restart_on_fail:
            return "restart"
        s.status = "pruned"
        return "done"

    def _find_answer(self, window: str) -> str | None:
        if not self.config.numina_answers:
            return extract_answer(window)
        if "answer is" not in window and "\\boxed" not in window:
            return None
        # The seed turned any failure here (an \fbox, an unclosed brace) into "-1".
        try:
            inner = numina_extract_boxed(window) if "boxed" in window else window
            return numina_normalize(inner)
        except TypeError:
            return "-1"

    # ------------------------------------------------------------ code execution

    def _execute(self, jobs: list[tuple[Sample, str]]) -> None:
        if not jobs:
            return
        cfg = self.config
        codes = [_numina_code(code) if cfg.numina_execution else code for _, code in jobs]
        results = self.sandbox.run_many(codes, timeout_s=cfg.code_timeout_s,
                                        display=not cfg.numina_execution)
        for (s, code), r in zip(jobs, results, strict=True):
            shown = _numina_output(r, cfg.code_timeout_s) if cfg.numina_execution else _clip(
                r.output.strip(), cfg.max_output_chars)
            s.code_calls.append(CodeCall(code, r.status, shown, r.duration_s))
            # The seed appended "{output}\n```" and let the model write the newline.
            s.text += f"{shown}\n```" if cfg.numina_execution else f"{shown}\n```\n"

    # ------------------------------------------------------------ voting

    def _params(self, s: Sample, step: int) -> GenerationParams:
        cfg = self.config
        return GenerationParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, stop=(STOP,), include_stop_str_in_output=True,
                                seed=cfg.seed * 1_000_003 + step * 10_007 + s.index)

    def _result(self, problem: str, samples: list[Sample], start: float) -> SolveResult:
        cfg = self.config
        # Plain majority, ties to the first seen: the seed's Counter.most_common() too.
        v = vote([s.answer for s in samples], rules=cfg.rules)
        return SolveResult(
            problem=problem, answer=v.answer, votes=v.votes, fallback=v.fallback,
            stopped_early=False, samples=samples,
            tokens_generated=sum(s.tokens for s in samples),
            elapsed_s=time.monotonic() - start, preset=cfg.name)


# ---------------------------------------------------------------- the seed's executor format

NUMINA_PRELUDE = "import math\nimport numpy as np\nimport sympy as sp\n"


def _numina_code(code: str) -> str:
    """The seed's transformation: prelude, and print(...) around a last line without print(
    (so `x = 5` becomes `print(x = 5)`, an error the model then sees; kept, it steers it)."""
    lines = (NUMINA_PRELUDE + code).strip().split("\n")
    if "print(" not in lines[-1]:
        last = lines[-1].split("#")[0] if "#" in lines[-1] else lines[-1]
        lines[-1] = f"print({last})"
    return "\n".join(lines)


def _numina_output(r: ExecutionResult, timeout_s: float) -> str:
    """What the seed showed the model: stdout on success; on failure its filtered traceback
    (the file path, and with it the line number, cut away); cut at 200 characters."""
    if r.status == "ok":
        text = r.output.strip()
    elif r.status == "timeout":
        text = f"Timed out after {timeout_s:g} seconds."
    elif r.status == "error":
        text = _numina_traceback(r.output)
    else:
        text = ""  # a killed python3 left nothing on stderr
    return text[:200] + " ... (output truncated)" if len(text) > 200 else text


def _numina_traceback(output: str) -> str:
    start = output.find("Traceback (most recent call last):")
    if start < 0:  # a SyntaxError has no "Traceback" line
        start = output.find('  File "<cell>"')
    lines = output[max(start, 0) :].strip().split("\n")
    kept, want_next = [], False
    for line in lines:
        if "Traceback" in line or line == lines[-1]:
            kept.append(line)
        elif '"<cell>"' in line:
            kept.append(line[: line.index('"') + 1])  # the seed cut from the path on
            want_next = True
        elif want_next:
            kept.append(line)
            want_next = False
    return "\n".join(kept).strip()


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters truncated] ...\n{text[-half:]}"
