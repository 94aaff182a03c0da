"""Stopping rules (aimo_lib.stopping): the posteriors, the trace stop, and the replay."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimo_lib.stopping import (
    StopRule,
    Trace,
    TraceStop,
    beta_confidence,
    cut_at,
    dirichlet_confidence,
    majority,
    replay,
)

counts_st = st.dictionaries(st.integers(0, 9), st.integers(1, 12), max_size=5)
traces_st = st.lists(st.builds(Trace, st.one_of(st.none(), st.integers(0, 3)),
                               st.integers(1, 60)), min_size=1, max_size=12)


def test_beta_confidence_is_the_beta_posterior_mass_above_one_half():
    # P(p > 1/2), p ~ Beta(a, b), integrated numerically: the closed form must match it
    for lead, second in [(0, 0), (4, 0), (5, 1), (6, 1), (7, 3), (3, 5)]:
        a, b = lead + 1, second + 1
        norm = math.gamma(a) * math.gamma(b) / math.gamma(a + b)
        steps = 20000
        mass = sum(((k + 0.5) / steps) ** (a - 1) * (1 - (k + 0.5) / steps) ** (b - 1)
                   for k in range(steps // 2, steps)) / steps / norm
        assert beta_confidence(lead, second) == pytest.approx(mass, abs=1e-4)
    assert beta_confidence(4, 0) == 31 / 32  # four agreeing answers pass 0.95; three do not
    assert beta_confidence(3, 0) < 0.95 < beta_confidence(4, 0)


@given(st.integers(0, 30), st.integers(0, 30))
def test_beta_confidence_grows_with_the_lead_and_falls_with_the_runner_up(lead, second):
    p = beta_confidence(lead, second)
    assert 0.0 < p < 1.0
    assert beta_confidence(lead + 1, second) > p > beta_confidence(lead, second + 1)
    assert beta_confidence(lead, second) + beta_confidence(second, lead) == pytest.approx(1.0)


def test_dirichlet_confidence_against_the_beta_rule():
    # the Dirichlet also weighs answers not yet seen: never surer than the top-two Beta rule
    for lead, second in [(4, 1), (5, 2), (3, 3), (12, 1)]:
        assert dirichlet_confidence([lead, second], draws=20000) <= beta_confidence(
            lead, second) + 0.01
    assert dirichlet_confidence([12, 1], draws=20000) == pytest.approx(
        beta_confidence(12, 1), abs=0.01)  # with a clear leader the two agree
    # a third answer can only make the leader less sure
    assert dirichlet_confidence([5, 2, 2], draws=5000) < dirichlet_confidence([5, 2], 5000)
    assert dirichlet_confidence([5, 2], 500, seed=3) == dirichlet_confidence([5, 2], 500, 3)
    # one answer seen: the bucket of answers not yet seen keeps it from being certain
    assert dirichlet_confidence([1], draws=20000) == pytest.approx(beta_confidence(1, 0),
                                                                   abs=0.01)
    assert dirichlet_confidence([4], draws=20000) == pytest.approx(31 / 32, abs=0.01)


def test_the_solvers_rules():
    table = StopRule("table")
    assert table.should_stop({5: 4}, pending=44)  # 4 of 4
    assert not table.should_stop({5: 3, 6: 1}, pending=44)
    assert table.should_stop({5: 5, 6: 2}, pending=41)  # 5 of 7
    assert not table.should_stop({5: 5, 6: 5}, pending=0)  # a tie is not decided
    assert not StopRule(table=((4, 8),)).should_stop({5: 4, 6: 4}, pending=1)  # nor here
    assert StopRule("unbeatable").should_stop({5: 9, 6: 1}, pending=7)  # 9-1 > 7
    assert not StopRule("unbeatable").should_stop({5: 9, 6: 1}, pending=8)
    share = StopRule("share", min_answers=5, threshold=0.8)
    assert share.should_stop({1: 4, 2: 1}, pending=40)
    assert not share.should_stop({1: 3, 2: 1}, pending=40)


@given(counts_st, st.integers(0, 20), st.sampled_from(["table", "beta", "dirichlet", "share",
                                                       "unbeatable"]))
def test_every_rule_stops_when_the_leader_cannot_be_caught(counts, pending, kind):
    ranked = sorted(counts.values(), reverse=True) + [0, 0]
    if counts and ranked[0] - ranked[1] > pending:
        assert StopRule(kind, draws=200).should_stop(counts, pending)
    assert not StopRule(kind).should_stop({}, pending)


def test_beta_rule_stops_on_agreement_and_waits_on_a_split():
    rule = StopRule("beta", threshold=0.95)
    assert not rule.should_stop({7: 3}, 13)
    assert rule.should_stop({7: 4}, 12)
    assert not rule.should_stop({7: 5, 8: 1}, 10)  # 0.9375
    assert rule.should_stop({7: 6, 8: 1}, 9)
    assert not StopRule("beta", threshold=0.95, min_answers=5).should_stop({7: 4}, 12)


@given(st.lists(st.integers(0, 12), max_size=40), st.integers(0, 8), st.integers(0, 12))
def test_cut_at_is_the_first_window_above_the_threshold(quarters, window, limit):
    entropies, threshold = [q / 4 for q in quarters], limit / 4  # exact in binary floats
    expected = None
    if window:
        for t in range(window, len(entropies) + 1):
            if sum(entropies[t - window:t]) / window > threshold:
                expected = t
                break
    assert cut_at(entropies, window, threshold) == expected


waves_st = st.one_of(st.none(), st.integers(1, 5), st.lists(st.integers(1, 5), max_size=3))


@settings(max_examples=200)
@given(traces_st, waves_st)
def test_stopping_only_when_nothing_can_change_keeps_the_full_vote(traces, wave):
    full = majority([t.answer for t in traces])
    r = replay(traces, StopRule("unbeatable"), wave=wave)
    assert r.answer == full
    assert r.tokens <= sum(t.tokens for t in traces)


@given(traces_st, waves_st,
       st.sampled_from([StopRule("table"), StopRule("beta"),
                        StopRule("share", threshold=0.7, min_answers=3)]))
def test_a_replay_never_costs_more_than_generating_everything(traces, wave, rule):
    r = replay(traces, rule, wave=wave)
    total = sum(t.tokens for t in traces)
    assert 0 < r.tokens <= total and 1 <= r.samples <= len(traces)
    if not r.stopped:
        assert r.tokens == total and r.samples == len(traces)
        assert r.answer == majority([t.answer for t in traces])


def test_a_parallel_stop_keeps_the_stragglers_partial_tokens():
    traces = [Trace(5, 10 * (i + 1)) for i in range(8)]  # lengths 10..80, all answer 5
    r = replay(traces, StopRule("table"))
    # the 4th finishes at 40 tokens: 10+20+30+40 finished, four stragglers at 40 each
    assert (r.answer, r.samples, r.tokens, r.stopped) == (5, 4, 100 + 4 * 40, True)
    # one at a time (Adaptive-Consistency's setting) the stragglers never start
    r = replay(traces, StopRule("beta"), wave=1)
    assert (r.samples, r.tokens) == (4, 100)
    # in waves of 4: the first wave decides at its last sample
    assert replay(traces, StopRule("table"), wave=4).tokens == 100
    assert replay(traces, StopRule("table"), wave=[4, 4]).tokens == 100
    split = [Trace(a, 10) for a in (1, 2, 1, 2, 1, 1, 1, 1)]
    # four, then (no 4 of 4) the other four all at once: the table's 5 of 7 stops the second
    # wave when its third sample finishes (they all end at step 10: ties by index)
    r = replay(split, StopRule("table"), wave=[4])
    assert (r.samples, r.tokens, r.answer) == (7, 80, 1)


def test_a_trace_stopped_for_low_confidence_saves_its_tokens_and_loses_its_vote():
    sure, unsure = (0.1,) * 30, (0.1,) * 5 + (2.0,) * 25
    traces = [Trace(1, 30, unsure), Trace(1, 30, unsure), Trace(2, 30, sure)]
    r = replay(traces, StopRule("unbeatable"), trace=TraceStop(window=4, max_entropy=1.0))
    assert cut_at(unsure, 4, 1.0) == 7  # tokens 4..7: 0.1 + 3 * 2.0 > 4 * 1.0
    assert r.answer == 2  # the two unsure traces are cut: the sure one decides
    assert r.tokens == 7 + 7 + 30
    assert replay(traces, StopRule("unbeatable")).answer == 1
    # warm-up samples are never stopped: the first two run to their end and keep their votes
    r = replay(traces, StopRule("unbeatable"), trace=TraceStop(4, 1.0, warmup=2))
    assert r.answer == 1 and r.tokens == 90


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="rule='sometimes'"):
        StopRule("sometimes")
    with pytest.raises(ValueError, match="threshold"):
        StopRule("beta", threshold=1.5)
    assert "beta 0.95" in StopRule("beta").label
    with pytest.raises(ValueError, match="table"):
        StopRule(table=((5, 4),))
    assert "trace stop H8" in TraceStop(8, 1.0).label
