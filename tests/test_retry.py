"""Adaptive retry: a first wave without consensus is followed, while time is left, by a
second wave prompted with the candidate answers; both waves are voted together."""

import time

import pytest

from aimo_lib import Solver, SolverConfig
from aimo_lib.engines import ScriptedEngine
from aimo_lib.prompts import verification_problem


def _engine(first, second, delay_s=0.0):
    """First-wave samples answer first[k]; second-wave ones (their prompt lists the earlier
    answers) answer `second`. Returns the engine and the prompts it saw."""
    seen = []

    def fn(prompt, k):
        seen.append(prompt)
        if "Earlier attempts" in prompt:
            return f"checking \\boxed{{{second}}}"
        return f"\\boxed{{{first[k % len(first)]}}}"

    return ScriptedEngine(fn, delay_s=delay_s), seen


def cfg(**kw):
    base = dict(num_samples=4, early_stop=None, retry_samples=4, retry_below=0.75,
                stop_at_boxed=False)
    return SolverConfig.preset("default", **{**base, **kw})


@pytest.mark.parametrize("pipeline", ["rounds", "async"])
def test_a_split_first_wave_gets_a_second_one_with_the_candidates(sandbox, pipeline):
    engine, seen = _engine([1, 2, 3, 2], 3)
    res = Solver(engine, sandbox, cfg(pipeline=pipeline)).solve("Find x.")
    assert res.retried and len(res.samples) == 8
    assert [s.wave for s in res.samples] == [0] * 4 + [1] * 4
    assert [s.index for s in res.samples] == list(range(8))
    assert res.votes == {2: 2.0, 1: 1.0, 3: 5.0} and res.answer == 3  # voted together
    retry_prompts = {p for p in seen if "Earlier attempts" in p}
    assert retry_prompts and all("answers were 2, 1, 3." in p for p in retry_prompts)
    assert all(s.status == "answered" for s in res.samples)


def test_no_second_wave_after_consensus_or_when_off(sandbox):
    engine, seen = _engine([7, 7, 7, 1], 3)  # 3 of 4 agree: consensus at retry_below 0.75
    res = Solver(engine, sandbox, cfg()).solve("Find x.")
    assert not res.retried and res.answer == 7 and len(res.samples) == 4
    engine, _ = _engine([1, 2, 3, 4], 3)
    res = Solver(engine, sandbox, cfg(retry_samples=0)).solve("Find x.")
    assert not res.retried and len(res.samples) == 4
    # an early stop is a consensus too
    engine, _ = _engine([5], 3)
    res = Solver(engine, sandbox, cfg(early_stop=SolverConfig().early_stop)).solve("Find x.")
    assert not res.retried and res.answer == 5


def test_the_second_wave_stops_early_on_the_votes_of_both(sandbox):
    # first wave 1, 2, 3, 2 (no consensus); the second all say 2: with the first wave's two,
    # "4 of 4 answered" is reached after the second wave's first two, and the rest cancelled
    engine, _ = _engine([1, 2, 3, 2], 2, delay_s=lambda n: 0.05)
    res = Solver(engine, sandbox, cfg(pipeline="async", retry_samples=8,
                                      early_stop=SolverConfig().early_stop)).solve("Find x.")
    assert res.retried and res.answer == 2 and res.stopped_early
    assert sum(s.status == "cancelled" for s in res.samples if s.wave) >= 1


def test_no_second_wave_without_the_time_for_it(sandbox):
    # the first wave takes ~0.75 s of a 1.0 s limit: less than half of that is left
    engine, _ = _engine([1, 2, 3, 4], 3, delay_s=0.75)
    start = time.monotonic()
    res = Solver(engine, sandbox, cfg()).solve("Find x.", time_limit_s=1.0)
    assert not res.retried and time.monotonic() - start < 1.0 + 2.0


def test_the_second_wave_speaks_the_dialect(sandbox):
    prompts = []

    def fn(prompt, k):
        prompts.append(prompt)
        return f"<|channel|>final<|message|>\\boxed{{{k % 3 + 10 * ('Earlier' in prompt)}}}"

    config = cfg(dialect="harmony", competition="aimo3")
    res = Solver(ScriptedEngine(fn), sandbox, config).solve("Find x.")
    assert res.retried
    second = [p for p in prompts if "Earlier attempts" in p]
    assert second and all(p.startswith("<|start|>system") for p in second)
    assert all("<|start|>user<|message|>Find x.\n\nEarlier attempts" in p for p in second)


def test_verification_problem_lists_the_candidates_or_leaves_the_problem_alone():
    assert verification_problem("P", []) == "P"
    text = verification_problem("P", [12, 7])
    assert text.startswith("P\n\n") and "answers were 12, 7." in text and "\\boxed{}" in text
