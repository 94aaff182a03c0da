"""Hostile outputs, round 2 (issue 22): one regression test per way found to break solve()'s
promises (it never raises, returns within time_limit_s + ALLOWANCE_S, answers an integer
valid for the competition, and votes right), each failing on the code before the fix, plus
properties of the pieces fixed. Scripted engines, real code execution."""

import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimo_lib import Solver, SolverConfig
from aimo_lib.answers import (
    AIMO1,
    AIMO3,
    extract_answer,
    normalize_answer,
)
from aimo_lib.budget import ALLOWANCE_S
from aimo_lib.dialects import ToRA, get_dialect
from aimo_lib.engines import Completion, ScriptedEngine, align_token_ids, as_engine
from aimo_lib.stopping import StopRule
from aimo_lib.voting import vote

OUT = "```output\n"
ASSISTANT = "<|im_start|>assistant\n"
BOX = "\\boxed{"


def cfg(n=1, **kw):
    return SolverConfig.preset("default", num_samples=n, **{"stop_at_boxed": False, **kw})


def solve_within(solver, limit_s, problem="q"):
    start = time.monotonic()
    res = solver.solve(problem, time_limit_s=limit_s)
    took = time.monotonic() - start
    assert took <= limit_s + ALLOWANCE_S, f"returned {took - limit_s:.1f} s after its limit"
    return res


# ---------------------------------------------------------------- 1. degenerate text, deadline

DEGENERATE = [BOX * 30_000, "\\fbox{" * 30_000, "{" * 200_000, BOX + "}" * 200_000,
              "The answer is " * 20_000, "**Answer:** " * 20_000, "9" * 200_000 + "x",
              "the answer is " + " 1" * 50_000]


@pytest.mark.parametrize("text", DEGENERATE, ids=lambda t: repr(t[:12]))
def test_answers_are_read_in_linear_time(text):
    # "\boxed{" 30,000 times (210k characters): minutes before (every match rescanned the text
    # to its end), milliseconds now. The bound is generous: it fails only on quadratic work.
    start = time.monotonic()
    for dialect in ("tora", "tora_seed", "harmony"):
        d = get_dialect(dialect)
        reading = d.read("", text)
        if reading.raw is not None:
            d.to_int(reading.raw, AIMO3)
    normalize_answer(extract_answer(text))
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("dialect,text", [
    ("tora", BOX * 6000),
    ("harmony", "<|channel|>final<|message|>" + BOX * 6000),  # a final message gone wrong
])
@pytest.mark.parametrize("pipeline", ["rounds", "async"])
def test_a_degenerate_output_does_not_overrun_the_deadline(sandbox, dialect, text, pipeline):
    # 42k characters: 13 s per reading before, so solve() returned 5.7 s (rounds) or 11.9 s
    # (async, max_rounds=6) after a 2 s limit.
    engine = ScriptedEngine(lambda p, k: text)
    config = cfg(1, dialect=dialect, pipeline=pipeline, max_rounds=3, competition="aimo3")
    res = solve_within(Solver(engine, sandbox, config), 2.0)  # 3 readings: 39 s before
    assert res.error is None and res.fallback


def test_the_async_driver_starts_nothing_after_the_deadline(sandbox):
    # Requests that finished before the deadline but were read after it used to get their
    # next step submitted anyway (only code execution looked at the clock).
    class SlowReading(ToRA):
        def read(self, prompt, text):
            time.sleep(0.4)
            return super().read(prompt, text)

    submitted = []

    class Recording(ScriptedEngine):
        def submit(self, prompt, params):
            submitted.append(time.monotonic())
            return super().submit(prompt, params)

    solver = Solver(Recording(lambda p, k: "thinking, no answer"), sandbox,
                    cfg(4, pipeline="async", early_stop=None, max_rounds=10))
    solver.steps.dialect = SlowReading()
    start = time.monotonic()
    res = solve_within(solver, 0.6)
    assert res.timed_out
    late = [t - start for t in submitted if t > start + 0.6 + 0.05]
    assert not late, f"requests submitted after the deadline, at {late} s"


# ---------------------------------------------------------------- 2. an infinite time limit


@pytest.mark.parametrize("limit", [float("inf"), 1e300, 1e12])
@pytest.mark.parametrize("pipeline", ["rounds", "async"])
def test_an_infinite_time_limit_is_no_limit(sandbox, limit, pipeline):
    # `aimo ... --time-limit inf`: OverflowError ("timestamp out of range for platform
    # time_t") from the wait for the code blocks, and the fallback.
    engine = ScriptedEngine(lambda p, k: "\\boxed{5}" if OUT in p else
                            "```python\nprint(5)\n```\n" + OUT)
    res = Solver(engine, sandbox, cfg(2, pipeline=pipeline)).solve("q", time_limit_s=limit)
    assert (res.answer, res.error, res.fallback) == (5, None, False)


def test_a_nan_time_limit_answers_at_once(sandbox):
    engine = ScriptedEngine(lambda p, k: "\\boxed{5}", delay_s=5.0)
    start = time.monotonic()
    res = Solver(engine, sandbox, cfg(2)).solve("q", time_limit_s=float("nan"))
    assert time.monotonic() - start <= ALLOWANCE_S
    assert res.timed_out and res.fallback and res.error is None


# ---------------------------------------------------------------- 3. entropies and weights


@pytest.mark.parametrize("bad", [float("nan"), None, -800.0, float("inf"), 1e308, "x"])
@pytest.mark.parametrize("pipeline", ["rounds", "async"])
def test_garbage_entropies_do_not_break_the_vote(sandbox, bad, pipeline):
    # [nan], [None], [-800.0] made the final vote raise (StopIteration, TypeError,
    # OverflowError) outside solve()'s guard.
    engine = ScriptedEngine(lambda p, k: f"so \\boxed{{{5 if k < 3 else 7}}}",
                            entropy=lambda text: bad if "{5" in text else 0.1)
    config = cfg(5, pipeline=pipeline, early_stop=None, logprobs_top_k=5,
                 vote_weights="tail_entropy")
    res = Solver(engine, sandbox, config).solve("q")
    assert res.error is None and not res.fallback
    assert all(math.isfinite(w) for w in res.votes.values())
    # What is not an entropy is dropped: the 5s count as samples without logprobs (weight 1)
    assert res.answer == 5 and res.votes[5] == 3.0
    assert all(s.mean_entropy is None for s in res.samples if s.answer == 5)


@pytest.mark.parametrize("field,value", [
    ("entropy_sharpness", float("nan")), ("entropy_sharpness", -1000.0),
    ("entropy_sharpness", float("inf")), ("code_ok_weight", float("nan")),
    ("code_ok_weight", float("inf")), ("code_ok_weight", 0.0), ("code_ok_weight", -1.0),
    ("fallback", -1), ("fallback", 5000), ("fallback", 2.5), ("fallback", True)])
def test_weights_and_fallback_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        SolverConfig.preset("default", **{field: value})


def test_the_fallback_follows_the_competition():
    assert SolverConfig.preset("default", fallback=5000, competition="aimo3").rules.fallback \
        == 5000
    assert SolverConfig.preset("default", fallback=None).fallback is None
    with pytest.raises(ValueError, match=r"fallback=100000 .* \[0, 99999\]"):
        SolverConfig.preset("default", fallback=100000, competition="aimo3")
    with pytest.raises(ValueError, match="0 to 999 "):
        SolverConfig.preset("default", fallback=5000, competition="aimo1")


def test_vote_refuses_weights_that_are_not_numbers():
    for bad in (float("nan"), -1.0, float("inf"), None, "heavy"):
        with pytest.raises(ValueError, match="finite and >= 0"):
            vote([1, 2], weights=[1.0, bad])
    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        vote([1, 2], weights=[1.0])


@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 5)),
                          st.floats(0, 1e308, allow_nan=False)), max_size=20))
def test_vote_names_the_heaviest_answer_first_seen(pairs):
    answers, weights = [a for a, _ in pairs], [w for _, w in pairs]
    v = vote(answers, weights)
    valid = [a for a in answers if a is not None]
    if not valid:
        assert v.fallback and v.answer == AIMO1.fallback
        return
    assert v.answer in valid and v.votes[v.answer] == max(v.votes.values())
    best = max(v.votes.values())
    assert v.answer == next(a for a in valid if v.votes[a] == best)  # ties: first seen


# ---------------------------------------------------------------- 4. weighted early stop


def test_a_weighted_early_stop_never_answers_a_minority(sandbox):
    # One fast, sure sample answers 9; four fast, unsure ones 7: "4 of <=8" counted 7's
    # consensus and stopped, then the weighted vote of those five returned 9. The three slow,
    # sure samples (all 7) make the full vote 7.
    def fn(prompt, k):
        if k == 0:
            return "\\boxed{9}"
        return "hmm \\boxed{7}" if k < 5 else "wait " * 20 + "\\boxed{7}"

    def entropy(text):
        return 3.0 if text.startswith("hmm") else 0.0

    def solve(early_stop):
        engine = ScriptedEngine(fn, delay_s=lambda n: 0.0 if n == 1 else 0.1 if n == 2 else
                                0.6, entropy=entropy)
        config = cfg(8, pipeline="async", early_stop=early_stop, logprobs_top_k=5,
                     vote_weights="tail_entropy")
        solver = Solver(engine, sandbox, config)
        return solver, solver.solve("q")

    _, full = solve(None)
    solver, res = solve(StopRule(table=((4, 8),)))
    assert full.answer == 7
    assert res.answer == full.answer
    assert res.answer == solver.tally(res.samples).answer


# ---------------------------------------------------------------- 5. the seed's dialect, AIMO 3


def test_numina_preset_under_aimo3_rules_keeps_five_digit_answers(sandbox):
    assert get_dialect("tora_seed").to_int("12345", AIMO3) == 12345  # was 345
    assert get_dialect("tora_seed").to_int("12345", AIMO1) == 345  # the seed's own rule
    assert get_dialect("tora_seed").to_int("100000", AIMO3) is None

    def fn(prompt, k):
        if prompt.endswith("### Solution: "):
            return "```python\nprint(12345)\n```\n" + OUT
        return "The answer is \\boxed{12345}."

    config = SolverConfig.preset("numina_aimo1", num_samples=2, competition="aimo3")
    assert Solver(ScriptedEngine(fn), sandbox, config).solve("q").answer == 12345


# ---------------------------------------------------------------- 6. declared capabilities


def test_as_engine_keeps_a_declared_supports_logprobs(sandbox):
    class Plain:  # not an Engine: as_engine adapts it
        supports_logprobs = True

        def __init__(self):
            self.n = 0

        def generate(self, prompts, params):
            out = []
            for p in params:
                self.n += 1
                answer, h = (5, 2.0) if self.n <= 3 else (7, 0.1)
                out.append(Completion(f"\\boxed{{{answer}}}", "eos", 1,
                                      entropies=[h] if p.logprobs > 0 else None))
            return out

    assert as_engine(Plain()).supports_logprobs
    config = cfg(5, early_stop=None, logprobs_top_k=5, vote_weights="tail_entropy")
    res = Solver(Plain(), sandbox, config).solve("q")
    assert res.answer == 7  # 2 sure 7s outweigh 3 unsure 5s: the weights are on


# ---------------------------------------------------------------- 7. markdown answers


@pytest.mark.parametrize("text,answer", [
    ("The answer is **42**.", 42), ("**Final answer:** \\(42\\)", 42), ("**Answer:** 42", 42),
    ("Answer: 42", 42), ("### Answer\n\n**Answer:** $42$", 42), ("The answer is *42*.", 42),
    ("**The answer is 42.**", 42), ("Final answer: \\[ 1{,}024 \\]", 24),
    ("The final answer is $\\boxed{42}$.", 42), ("Answer choices: (A) 1", None),
])
def test_final_answers_in_markdown_are_read(text, answer):
    assert normalize_answer(extract_answer(text)) == answer


def test_python_powers_survive_the_markdown_stripping():
    assert normalize_answer("2**10", AIMO3) == 1024 and normalize_answer("*2**3*") == 8


def test_a_markdown_final_message_answers_and_does_not_restart(sandbox):
    a = "<|start|>assistant"
    engine = ScriptedEngine(lambda p, k: f"{a}<|channel|>final<|message|>**Answer:** 42"
                                         "<|return|>")
    res = Solver(engine, sandbox, cfg(1, dialect="harmony", competition="aimo3")).solve("q")
    s = res.samples[0]
    assert (res.answer, s.restarts, s.status) == (42, 0, "answered")


# ---------------------------------------------------------------- 8. token alignment


def _toy_tokenizer():
    """Token i is chr(i); token -1 is a special token the text leaves out."""
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return "".join("<|s|>" if i == -1 else chr(i) for i in ids)

    def encode(text):
        return [ord(c) for c in text]

    return decode, encode, calls


def test_token_ids_align_in_log_decodes_when_an_early_token_is_dropped():
    # A special token at position 2 the text leaves out: every prefix was decoded, 0.6 s at
    # 2,000 tokens and about 40 s at 16k on vLLM's completion path.
    decode, encode, calls = _toy_tokenizer()
    body = [97 + i % 26 for i in range(16_000)]
    ids = body[:2] + [-1] + body[2:]
    text = "".join(map(chr, body))
    kept = align_token_ids(text, ids, decode, encode)
    assert decode(kept) == text and kept[:2] == ids[:2]
    assert len(calls) <= 2 * math.log2(len(ids)) + 4


@given(st.lists(st.integers(0, 40), max_size=60), st.integers(0, 60), st.text(max_size=5))
def test_token_ids_always_decode_to_the_text(ids, cut, tail):
    decode, encode, _ = _toy_tokenizer()
    ids = [i + 60 if i else -1 for i in ids]
    full = decode(ids)
    for text in (full[:cut], full[:cut] + tail, full.replace("<|s|>", "")):
        assert decode(align_token_ids(text, ids, decode, encode)) == text


# ---------------------------------------------------------------- 9. None for a completion


class ReturnsNone(ScriptedEngine):
    """An engine whose every request returns None instead of a Completion."""

    def _one(self, prompt, p, deadline=None, aborted=None):
        super()._one(prompt, p, deadline, aborted)  # counts the call
        return None


@pytest.mark.parametrize("pipeline", ["rounds", "async"])
def test_an_engine_returning_none_fails_its_samples(sandbox, pipeline):
    # No time limit: solve() never returned. 2 s: a busy loop of 14k calls.
    engine = ReturnsNone(lambda p, k: "\\boxed{1}")
    out = {}
    worker = threading.Thread(target=lambda: out.update(res=Solver(
        engine, sandbox, cfg(3, pipeline=pipeline)).solve("q")), daemon=True)
    worker.start()
    worker.join(30)
    assert "res" in out, "solve() did not return"
    res = out["res"]
    assert res.fallback and res.engine_failed and "None" in res.samples[0].error
    engine2 = ReturnsNone(lambda p, k: "\\boxed{1}")
    res = solve_within(Solver(engine2, sandbox, cfg(3, pipeline=pipeline)), 2.0)
    assert res.engine_failed and engine2.calls <= 3 * 2 + 1


def test_generate_returning_none_or_a_short_list_fails_samples_not_the_problem(sandbox):
    class Bare:
        def __init__(self, out):
            self.out, self.calls = out, 0

        def generate(self, prompts, params):
            self.calls += 1
            return self.out(prompts)

    for out in (lambda ps: None, lambda ps: [None] * len(ps), lambda ps: "text",
                lambda ps: [Completion("\\boxed{2}", "eos", 1)] + [None] * (len(ps) - 1)):
        engine = Bare(out)
        res = solve_within(Solver(engine, sandbox, cfg(3, early_stop=None)), 5.0)
        assert res.error is None and engine.calls <= 3 * 2 + 1
        assert {s.status for s in res.samples} <= {"error", "answered"}
