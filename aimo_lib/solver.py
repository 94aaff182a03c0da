"""SC-TIR: self-consistency over tool-integrated reasoning traces.

    solver = Solver(engine, sandbox, SolverConfig.preset("numina_aimo1", num_samples=8))
    result = solver.solve(problem, time_limit_s=300)   # SolveResult: answer, votes, samples

N samples each alternate reasoning, a ```python block, and that block's ```output, for up to
M generation steps; the answers are voted. One step of one sample: generate until the model
stops at "```output\\n" (or "\\boxed{", or ends), then decide its fate in `_decide`: run its
code, restart it, or take its answer. Two drivers share that step:

- rounds: every live sample generates in one batch, then all decide, then all code runs
  (the seed notebook's loop; best for batched engines such as HFEngine or offline vLLM);
- async: each sample goes generate -> execute -> generate on its own, with no barrier
  between samples (engines with `submit`: vLLM async, OpenAI-compatible servers).

Presets: "numina_aimo1" reproduces the AIMO-1 winning notebook rule for rule (see
../shared/REFERENCE.md section 1); "default" is ours (see PRESETS).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .answers import (
    RULES,
    AnswerRules,
    EarlyStop,
    decided,
    extract_answer,
    extract_boxed,
    normalize_answer,
    numina_extract_boxed,
    numina_normalize,
    numina_to_int,
    vote,
)
from .engines import EngineError, GenerationParams
from .prompts import render_prompt
from .sandbox import ExecutionResult, Sandbox

__all__ = ["CodeCall", "Sample", "SolveResult", "Solver", "SolverConfig", "dump_jsonl"]

STOP = "```output\n"
BOXED = "\\boxed{"
CODE_END = "\n```\n"  # the closing fence of a block
_PYTHON_BLOCK = re.compile(r"```python(.*?)```", re.DOTALL)
_OUTPUT_BLOCK = re.compile(r"```output(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class SolverConfig:
    """Every knob of the decoder. Build one with `SolverConfig.preset(name, **overrides)`."""

    name: str = "default"
    num_samples: int = 16  # N: width (samples voted over)
    max_rounds: int = 4  # M: generation steps per sample (at most M-1 code executions)
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 2048  # per step
    prompt_template: str = "chatml_tir"
    code_timeout_s: float = 5.0
    max_output_chars: int = 1000  # what the model sees of one execution
    restart_on_fail: bool = True  # a failed sample starts over from the prompt (else pruned)
    # The seed notebook's rules, each a switch so that presets differ only in data:
    code_required: bool = False  # no code -> restart/prune, and code-less answers are pruned
    answer_window: int | None = None  # look for the answer only in the last N characters
    numina_answers: bool = False  # its extraction/normalisation/round(float) filter
    numina_execution: bool = False  # its prelude, print-wrapping, traceback and 200-char cut
    # Beyond the seed:
    stateful: bool = True  # one sandbox session per sample: earlier blocks' names persist
    stop_at_boxed: bool = True  # a sample ends at its first \boxed{...}
    stop_at_code_end: bool = True  # run a ```python block as soon as it closes, even when the
    # model forgets to open the ```output block (we write that fence for it)
    answer_max_tokens: int = 32  # to close an answer's braces after stopping at "\boxed{"
    continue_from_ids: bool = True  # token-id prompts where the engine takes them
    pipeline: str = "auto"  # "async" where the engine can submit, else "rounds"
    early_stop: EarlyStop | None = EarlyStop()  # consensus: cancel stragglers once decided
    code_ok_weight: float = 1.0  # vote weight of samples whose code all ran cleanly
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
        if self.pipeline not in ("auto", "async", "rounds"):
            raise ValueError("pipeline must be 'auto', 'async' or 'rounds'")

    @property
    def rules(self) -> AnswerRules:
        if self.competition not in RULES:
            raise ValueError(f"competition must be one of {sorted(RULES)}")
        return replace(RULES[self.competition], fallback=self.fallback)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # The submitted AIMO-1 notebook (NuminaMath-7B-TIR, 29/50): N=48, M=4, T=0.8, 2048 tokens,
    # text prompts re-tokenised every step (token boundaries are part of what the model saw).
    "numina_aimo1": SolverConfig(
        name="numina_aimo1", num_samples=48, max_rounds=4, temperature=0.8, max_new_tokens=2048,
        prompt_template="numina", code_timeout_s=5.0, restart_on_fail=True, code_required=True,
        answer_window=100, numina_answers=True, numina_execution=True, stateful=False,
        stop_at_boxed=False, stop_at_code_end=False, continue_from_ids=False, pipeline="rounds",
        early_stop=None),
    # Ours: a stateful session per sample with real tracebacks and REPL display; answers read
    # anywhere under strict integer rules, pure-reasoning answers kept; a sample stops at its
    # first \boxed{}; consensus early stop; async where the engine allows; token-id prompts.
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
    # running | answered | pruned | hallucinated | exhausted | timeout | cancelled | error
    status: str = "running"
    raw_answer: str | None = None
    answer: int | None = None  # valid under the competition's rules, else None
    code_calls: list[CodeCall] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None  # of the last generation
    steps: int = 0  # generation steps taken (restarts do not reset it)
    restarts: int = 0
    elapsed_s: float = 0.0
    # Live state, not part of the record:
    session: Any = field(default=None, repr=False)
    ids: list[int] | None = field(default=None, repr=False)
    answer_tries: int = field(default=0, repr=False)
    resumes: int = field(default=0, repr=False)  # continuations within this step

    def record(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("session", "ids", "answer_tries", "resumes")}
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

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["votes"] = {str(k): v for k, v in self.votes.items()}
        d["samples"] = [s.record() for s in self.samples]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def dump_jsonl(results: Iterable[SolveResult], path: str) -> None:
    """Append results to a JSONL file, one line per problem."""
    with open(path, "a", encoding="utf-8") as f:
        for r in results:
            f.write(r.to_json() + "\n")


@dataclass
class _Run:
    """One solve() call in flight."""

    problem: str
    prompt: str
    samples: list[Sample]
    start: float
    deadline: float | None
    prompt_ids: list[int] | None = None
    stopped_early: bool = False
    timed_out: bool = False


class Solver:
    """Runs SC-TIR on one problem at a time; safe to call from any thread (not only main)."""

    def __init__(self, engine, sandbox: Sandbox, config: SolverConfig | None = None):
        self.engine, self.sandbox = engine, sandbox
        self.config = config or SolverConfig()
        self.config.rules  # noqa: B018 - validate the competition name now
        # Code runs (and blocking generate calls waiting on a deadline) happen on this pool.
        self._pool = ThreadPoolExecutor(max(8, self.config.num_samples),
                                        thread_name_prefix="solver")
        # Extra stop strings need an engine that says which stop string it hit.
        names = getattr(engine, "names_stop_strings", True)
        self._stop_at_boxed = self.config.stop_at_boxed and names
        self._stop_at_code_end = self.config.stop_at_code_end and names

    @property
    def pipeline(self) -> str:
        """The driver solve() will use with this engine: "async" or "rounds"."""
        can = callable(getattr(self.engine, "submit", None)) and getattr(
            self.engine, "supports_async", False)
        if self.config.pipeline == "async" and not can:
            raise ValueError(f"{type(self.engine).__name__} cannot run the async pipeline")
        return "async" if self.config.pipeline in ("auto", "async") and can else "rounds"

    def solve(self, problem: str, time_limit_s: float | None = None) -> SolveResult:
        """Solve one problem. At `time_limit_s` generation is cancelled and the best answer so
        far is returned (late by at most one code execution)."""
        cfg = self.config
        start = time.monotonic()
        deadline = None if time_limit_s is None else start + max(0.0, time_limit_s)
        run = _Run(problem, render_prompt(cfg.prompt_template, problem, self.engine),
                   [Sample(i) for i in range(cfg.num_samples)], start, deadline)
        if cfg.continue_from_ids and callable(getattr(self.engine, "tokenize", None)):
            run.prompt_ids = self.engine.tokenize(run.prompt, special=True)
            for s in run.samples:
                s.ids = list(run.prompt_ids)
        try:
            if self.pipeline == "async":
                self._solve_async(run)
            else:
                self._solve_rounds(run)
        finally:
            for s in run.samples:
                self._close_session(s)
        return self._result(run)

    # ------------------------------------------------------------ the round driver

    def _solve_rounds(self, run: _Run) -> None:
        live = list(run.samples)
        while live and not self._out_of_time(run):
            batch = [(s, "step") for s in live]
            while batch:  # a step, plus short continuations that close an answer
                completions = self._generate_batch(run, batch)
                if completions is None:
                    break
                more, to_run = [], []
                for (s, kind), c in zip(batch, completions, strict=True):
                    action = self._on_generated(run, s, c, kind)
                    if action == "execute":
                        to_run.append(s)
                    elif action in ("answer", "resume"):
                        more.append((s, action))
                batch = more
                self._execute(run, to_run)
            live = [s for s in live if s.status == "running"]
            if live and self._consensus(run, pending=len(live)):
                break
        self._finish_stragglers(run)

    def _generate_batch(self, run: _Run, batch: list[tuple[Sample, str]]):
        """engine.generate for a batch, cut short by the deadline (None if it passed)."""
        prompts = [self._prompt(run, s) for s, _ in batch]
        params = [self._params(s, kind) for s, kind in batch]
        if run.deadline is None:
            return self.engine.generate(prompts, params)
        if getattr(self.engine, "supports_deadline", False):
            out = self.engine.generate(prompts, params, deadline=run.deadline)
            return None if self._out_of_time(run) else out
        # A blocking engine cannot be interrupted: wait for it only until the deadline.
        future = self._pool.submit(self.engine.generate, prompts, params)
        try:
            return future.result(timeout=max(0.0, run.deadline - time.monotonic()))
        except TimeoutError:
            run.timed_out = True
            return None

    def _execute(self, run: _Run, samples: list[Sample]) -> None:
        if not samples:
            return
        if self.config.stateful:
            results = list(self._pool.map(lambda s: self._run_code(run, s), samples))
        else:
            codes = [self._code(s) for s in samples]
            done = self.sandbox.run_many([code for _, code in codes], self._code_timeout(run),
                                         display=not self.config.numina_execution)
            results = [(written, r) for (written, _), r in zip(codes, done, strict=True)]
        for s, (code, r) in zip(samples, results, strict=True):
            self._append_output(s, code, r)

    # ------------------------------------------------------------ the async driver

    def _solve_async(self, run: _Run) -> None:
        pending: dict[Future, tuple[Sample, str]] = {}

        def generate(s: Sample, kind: str) -> None:
            pending[self.engine.submit(self._prompt(run, s), self._params(s, kind))] = (s, kind)

        for s in run.samples:
            generate(s, "step")
        while pending:
            timeout = None if run.deadline is None else max(0.0, run.deadline - time.monotonic())
            done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                run.timed_out = True
                break
            for future in done:
                s, kind = pending.pop(future)
                if future.cancelled() or s.status != "running":
                    continue
                try:
                    result = future.result()
                except EngineError as exc:
                    s.status, s.raw_answer = "error", str(exc)[:200]
                    continue
                if kind == "code":
                    self._append_output(s, *result)
                    generate(s, "step")
                    continue
                action = self._on_generated(run, s, result, kind)
                if action == "execute":
                    pending[self._pool.submit(self._run_code, run, s)] = (s, "code")
                elif action in ("step", "answer", "resume"):
                    generate(s, action)
            running = sum(s.status == "running" for s in run.samples)
            if running and self._consensus(run, pending=running):
                break
        for future in pending:  # stragglers: stop generating (a running code block ends)
            abort = getattr(self.engine, "abort", None)
            if abort is not None and pending[future][1] != "code":
                abort(future)
            else:
                future.cancel()
        self._finish_stragglers(run)

    # ------------------------------------------------------------ one sample's step

    def _on_generated(self, run: _Run, s: Sample, c, kind: str) -> str:
        """Take a completion; return "execute", "step" (generate again: restarted),
        "answer" (close a \\boxed{), "resume" (carry on), or "done"."""
        cfg = self.config
        s.text += c.text
        s.tokens += c.num_tokens
        s.finish_reason = c.finish_reason
        if s.ids is not None:
            s.ids += c.token_ids if c.token_ids is not None else self.engine.tokenize(c.text)
        if kind == "step":
            s.steps, s.resumes = s.steps + 1, 0
        if self._stop_at_code_end and c.finish_reason == "stop" and s.text.endswith(CODE_END):
            fences = s.text.count("```")
            opened = s.text.rfind("```", 0, len(s.text) - len(CODE_END))
            if fences % 2 == 0 and s.text.startswith("```python", opened):
                self._append(s, STOP)  # the model closed its code: show it the output
            elif s.resumes < 8:  # a fence that opens a block, or closes a non-code one
                s.resumes += 1
                return "resume"
        if self._stop_at_boxed and c.finish_reason == "stop" and s.text.endswith(BOXED):
            if s.text.count("```") % 2 == 1 and s.resumes < 8:
                s.resumes += 1
                return "resume"  # "\boxed{" inside a code block is code, not an answer
            s.answer_tries = 0
            return "answer"
        if kind == "answer" and c.finish_reason == "stop" and s.answer_tries < 4:
            tail = s.text[s.text.rfind(BOXED):]
            if extract_boxed(tail) is None:  # nested braces: "}" closed an inner group
                s.answer_tries += 1
                return "answer"
        action = self._decide(run.prompt, s, last_step=s.steps >= cfg.max_rounds)
        if action == "restart":
            self._close_session(s)
            s.text, s.code_calls, s.restarts = "", [], s.restarts + 1
            if s.ids is not None:
                s.ids = list(run.prompt_ids)
            if s.steps < cfg.max_rounds:
                return "step"
            s.status = "exhausted"  # restarted in its last step: nothing left to generate
        if s.status != "running":
            s.elapsed_s = time.monotonic() - run.start
            self._close_session(s)
        return action

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
            s.status = "exhausted"  # no step left to show it the output
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

    def _code(self, s: Sample) -> tuple[str, str]:
        """(the last block as the model wrote it, the code to execute)."""
        block = _PYTHON_BLOCK.findall(s.text)[-1]
        if self.config.numina_execution:
            return block, _numina_code(block)
        code = block[1:] if block.startswith("\n") else block  # line numbers as the model sees
        return code, code

    def _code_timeout(self, run: _Run) -> float:
        t = self.config.code_timeout_s
        if run.deadline is not None:  # a block may not run far past the problem's deadline
            t = min(t, max(0.5, run.deadline - time.monotonic()))
        return t

    def _run_code(self, run: _Run, s: Sample) -> tuple[str, ExecutionResult]:
        (written, code), display = self._code(s), not self.config.numina_execution
        if not self.config.stateful:
            return written, self.sandbox.run(code, self._code_timeout(run), display)
        if s.session is None:
            s.session = self.sandbox.session()
        return written, s.session.run(code, self._code_timeout(run), display)

    def _append_output(self, s: Sample, code: str, r: ExecutionResult) -> None:
        cfg = self.config
        if cfg.numina_execution:
            shown = _numina_output(r, cfg.code_timeout_s)
            added = f"{shown}\n```"  # the seed let the model write the newline
        else:
            shown = _clip(r.output.strip(), cfg.max_output_chars)
            added = f"{shown}\n```\n"
        s.code_calls.append(CodeCall(code, r.status, shown, r.duration_s))
        self._append(s, added)

    def _append(self, s: Sample, text: str) -> None:
        """Add text the model did not generate (tool output, a fence) to a sample."""
        s.text += text
        if s.ids is not None:
            s.ids += self.engine.tokenize(text)

    def _close_session(self, s: Sample) -> None:
        if s.session is not None:
            session, s.session = s.session, None
            self._pool.submit(session.close)  # may wait for a block still running

    # ------------------------------------------------------------ stopping and voting

    def _out_of_time(self, run: _Run) -> bool:
        if run.deadline is not None and time.monotonic() >= run.deadline:
            run.timed_out = True
        return run.timed_out

    def _weights(self, samples: list[Sample]) -> list[float]:
        w = self.config.code_ok_weight
        return [w if s.code_calls and all(c.status == "ok" for c in s.code_calls) else 1.0
                for s in samples]

    def _consensus(self, run: _Run, pending: int) -> bool:
        cfg = self.config
        if cfg.early_stop is None:
            return False
        answered = [s for s in run.samples if s.answer is not None]
        v = vote([s.answer for s in answered], self._weights(answered), cfg.rules)
        if decided(v.votes, pending, cfg.early_stop, max(1.0, cfg.code_ok_weight)):
            run.stopped_early = True
        return run.stopped_early

    def _finish_stragglers(self, run: _Run) -> None:
        now = time.monotonic() - run.start
        for s in run.samples:
            if s.status == "running":
                s.status = ("cancelled" if run.stopped_early else
                            "timeout" if run.timed_out else "exhausted")
                s.elapsed_s = now

    def _prompt(self, run: _Run, s: Sample):
        return list(s.ids) if s.ids is not None else run.prompt + s.text

    def _params(self, s: Sample, kind: str) -> GenerationParams:
        cfg = self.config
        seed = cfg.seed * 1_000_003 + s.steps * 10_007 + s.index * 7 + s.answer_tries
        if kind == "answer":
            return GenerationParams(max_tokens=cfg.answer_max_tokens, temperature=cfg.temperature,
                                    top_p=cfg.top_p, stop=("}",), seed=seed)
        stop = (STOP,) + ((BOXED,) if self._stop_at_boxed else ()) + (
            (CODE_END,) if self._stop_at_code_end else ())
        return GenerationParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, stop=stop, include_stop_str_in_output=True,
                                seed=seed)

    def _result(self, run: _Run) -> SolveResult:
        cfg = self.config
        # Plain majority, ties to the first seen: the seed's Counter.most_common() too.
        answers = [s.answer for s in run.samples]
        v = vote(answers, self._weights(run.samples), rules=cfg.rules)
        return SolveResult(
            problem=run.problem, answer=v.answer, votes=v.votes, fallback=v.fallback,
            stopped_early=run.stopped_early, samples=run.samples,
            tokens_generated=sum(s.tokens for s in run.samples),
            elapsed_s=time.monotonic() - run.start, preset=cfg.name, timed_out=run.timed_out)


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
