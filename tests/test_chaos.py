"""Property-based chaos: a hostile engine (aimo_lib.chaos.ChaosEngine: broken fences, runaway
and crashing code, odd boxes, NULs, special tokens, exceptions of many types, stalls, random
latency) against both presets, both pipelines and two competitions' rules, and the same in
gpt-oss's harmony dialect (forged tool replies, calls that never end, odd channels). Whatever
it does, solve() returns, on time, an integer valid for the competition."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimo_lib import Solver, SolverConfig
from aimo_lib.chaos import FRAGMENTS, HARMONY_FRAGMENTS, ChaosEngine
from aimo_lib.gateway import validate_answer
from aimo_lib.solver import ALLOWANCE_S

STATUSES = {"answered", "pruned", "hallucinated", "exhausted", "context_full", "timeout",
            "cancelled", "error"}
LIMIT_S = 1.5

chaos = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32),
    "p_raise": st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    "p_stall": st.sampled_from([0.0, 0.05, 0.3]),
    "fragments": st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12).map(tuple),
    "harmony": st.lists(st.sampled_from(HARMONY_FRAGMENTS), min_size=1, max_size=12).map(tuple),
    "max_model_len": st.sampled_from([None, 60, 400]),
    "retry": st.sampled_from([0, 3]),  # a second wave where the first has no consensus
})


@pytest.mark.parametrize("competition", ["aimo1", "aimo3"])
@pytest.mark.parametrize("pipeline", ["rounds", "async"])
@pytest.mark.parametrize("preset,dialect", [("default", "tora"), ("numina_aimo1", "tora_seed"),
                                            ("default", "harmony")])
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(draw=chaos)
def test_solve_survives_a_hostile_engine(sandbox, preset, dialect, pipeline, competition, draw):
    fragments = draw["harmony" if dialect == "harmony" else "fragments"]
    engine = ChaosEngine(draw["seed"], p_raise=draw["p_raise"], p_stall=draw["p_stall"],
                         fragments=fragments, max_model_len=draw["max_model_len"])
    config = SolverConfig.preset(
        preset, num_samples=4, max_rounds=3, max_new_tokens=40, code_timeout_s=0.5,
        pipeline=pipeline, competition=competition, dialect=dialect,
        max_tool_calls=1 if dialect == "harmony" else None, retry_samples=draw["retry"])
    start = time.monotonic()
    try:
        result = Solver(engine, sandbox, config).solve("What is 6 * 7?", time_limit_s=LIMIT_S)
    finally:
        engine.close()
    took = time.monotonic() - start
    assert took <= LIMIT_S + ALLOWANCE_S
    assert validate_answer(result.answer, competition) == result.answer
    assert result.fallback == (not result.votes)
    if result.fallback:
        assert result.answer == config.rules.fallback
    assert {s.status for s in result.samples} <= STATUSES
    assert len(result.samples) in (4, 4 + draw["retry"])
    for s in result.samples:
        assert s.answer is None or validate_answer(s.answer, competition) == s.answer
    result.to_json()  # the record is always writable
