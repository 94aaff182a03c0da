"""Stopping rules for self-consistency: when may a problem's remaining samples be cancelled?
One rule type, used by the solver (the `early_stop` setting) and by bench's replay, so what the
replay measures is the code that runs.

    rule = StopRule("beta", threshold=0.95)                # Adaptive-Consistency's Beta rule
    rule.should_stop({437: 4}, pending=4)                  # True: 4 of 4 agree
    replay(traces, rule, wave=1)                           # a recorded problem, replayed

Every rule looks at the answers counted so far (answer -> number of samples) and at how many
samples could still arrive; all of them also stop when the leader cannot be caught
(`unbeatable`). The rules:

- "table" (the default, imagination-research's AIMO-2 rule): the leader holds k of at most
  n answers, for any (k, n) of the table (4 of 4, 5 of 7, 6 of 9).
- "share" (DeepConf's consensus stop, Fu et al. 2025): the leader holds `threshold` of at
  least `min_answers` answers.
- "beta" (Adaptive-Consistency, Aggarwal et al. 2023): the posterior probability that the
  leader's share beats the runner-up's, under a uniform Beta prior on the top two's split,
  reaches `threshold`: P(p > 1/2), p ~ Beta(v1 + 1, v2 + 1). Their recommended rule.
- "dirichlet" (the same paper): the probability that the leader has the largest share under a
  Dirichlet(counts + 1) posterior over all answers seen (Monte Carlo, seeded).
- "unbeatable": nothing more.

Confidence-aware trace stopping (DeepConf's online mode, `TraceStop`; measured by the replay
only, the solver does not cut samples): a sample whose mean token entropy over its last
`window` tokens rises above `max_entropy` is stopped there, its remaining tokens saved and its
vote dropped (DeepConf keeps traces whose sliding-window "group confidence" stays high; a
token's entropy is our confidence measure, lower is surer). It combines with any rule above;
the first `warmup` samples always run to their end (DeepConf's online mode sets the threshold
from such warm-up traces of the same problem).

`replay` plays a recorded problem (every sample generated to its end, early stop off) under a
rule: the samples run in waves of `wave` (None: all at once, as the solver runs them; 1: one
after another, Adaptive-Consistency's setting; a list of sizes: those waves, e.g. [4, 12] for
four samples and, unless they settle it, the other twelve), every running sample generates one
token per step (one decoding speed for all: continuous batching), the rule is asked each time a
sample finishes, and a stop cancels what is still running, keeping the tokens it had generated.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .fields import check_fields, setting

__all__ = ["RULES", "Replay", "StopRule", "Trace", "TraceStop", "beta_confidence", "cut_at",
           "dirichlet_confidence", "majority", "replay", "unbeatable"]

RULES = ("table", "share", "beta", "dirichlet", "unbeatable")


def _table_problem(table: object) -> str | None:
    ok = isinstance(table, tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        and 1 <= pair[0] <= pair[1] for pair in table)
    return None if ok else "it takes pairs (k, n) of integers with 1 <= k <= n, e.g. 4/4,5/7"


@dataclass(frozen=True)
class StopRule:
    """When a problem's vote is settled before every sample has finished (see the module
    docstring for the rules)."""

    rule: str = setting("table", " | ".join(RULES), choices=RULES)
    table: tuple[tuple[int, int], ...] = setting(
        ((4, 4), (5, 7), (6, 9)), "(k, n) pairs: the leader holds k of at most n answers",
        check=_table_problem)
    threshold: float = setting(0.95, "share: the leader's share; beta, dirichlet: the "
                               "posterior probability that the leader leads", gt=0.0, le=1.0)
    min_answers: int = setting(1, "share, beta, dirichlet: never stop on fewer answers",
                               ge=1, le=100_000)
    draws: int = setting(2000, "dirichlet: Monte Carlo draws", ge=1, le=1_000_000)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def label(self) -> str:
        """A short name for tables."""
        if self.rule == "table":
            return "table " + ", ".join(f"{k}/{n}" for k, n in self.table)
        if self.rule == "unbeatable":
            return "unbeatable only"
        more = f" (>= {self.min_answers})" if self.min_answers > 1 else ""
        return f"{self.rule} {self.threshold:g}{more}"

    def should_stop(self, counts: dict[int, int], pending: int) -> bool:
        """Stop the problem now? `counts`: answer -> samples that gave it; `pending`: samples
        still running or not yet started. A tie never stops."""
        if not counts:
            return False
        if unbeatable(counts, pending):
            return True
        ranked = sorted(counts.values(), reverse=True) + [0]
        lead, second, total = ranked[0], ranked[1], sum(counts.values())
        if self.rule == "table":
            return lead > second and any(lead >= k and total <= n for k, n in self.table)
        if self.rule == "unbeatable" or total < self.min_answers:
            return False
        if self.rule == "beta":
            return beta_confidence(lead, second) >= self.threshold
        if self.rule == "dirichlet":
            leader = max(counts, key=counts.__getitem__)
            ordered = [counts[leader]] + [c for a, c in counts.items() if a != leader]
            return dirichlet_confidence(ordered, self.draws) >= self.threshold
        return lead / total >= self.threshold  # share


@dataclass(frozen=True)
class TraceStop:
    """DeepConf's online trace stop, for the replay: cut a sample whose mean entropy over its
    last `window` tokens rises above `max_entropy`; the first `warmup` samples are never cut."""

    window: int
    max_entropy: float
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.window < 1 or self.warmup < 0 or math.isnan(self.max_entropy):
            raise ValueError("TraceStop: window >= 1, warmup >= 0, max_entropy a number")

    @property
    def label(self) -> str:
        return f"trace stop H{self.window} > {self.max_entropy:g}"


@dataclass(frozen=True)
class Trace:
    """One recorded sample: its answer (None: none valid), the tokens it generated, and each
    token's entropy in nats (empty without logprobs)."""

    answer: int | None
    tokens: int
    entropies: tuple[float, ...] = ()


@dataclass(frozen=True)
class Replay:
    """A problem replayed under a rule."""

    answer: int | None  # the vote over the samples counted (None: none answered)
    tokens: int  # tokens generated before the stop (a cancelled sample's partial ones too)
    samples: int  # samples that finished (ended, or were stopped by the trace rule)
    stopped: bool  # the rule stopped the problem before every sample finished


# ---------------------------------------------------------------- the posteriors


def beta_confidence(lead: int, second: int) -> float:
    """P(p > 1/2) for p ~ Beta(lead + 1, second + 1): how sure a uniform prior over the top
    two answers' split is that the leader is ahead. For integers this is a binomial tail:
    P(Binomial(lead + second + 1, 1/2) <= lead), exact."""
    if lead < 0 or second < 0:
        raise ValueError("vote counts are >= 0")
    n = lead + second + 1
    return sum(math.comb(n, j) for j in range(lead + 1)) / 2 ** n


def dirichlet_confidence(counts: Sequence[int], draws: int = 2000, seed: int = 0) -> float:
    """P(the first answer of `counts` has the largest share) under Dirichlet(counts + 1) over
    the answers seen plus one bucket for every answer not yet seen (count 0: without it one
    answer seen once would be "certain"), by Monte Carlo over `draws` seeded draws (a fixed
    seed: the rule is deterministic, and a function of the counts alone, computed once)."""
    if not counts:
        return 0.0
    return _dirichlet(counts[0], tuple(sorted(counts[1:], reverse=True)) + (0,), draws, seed)


@functools.lru_cache(maxsize=65536)
def _dirichlet(first: int, others: tuple[int, ...], draws: int, seed: int) -> float:
    rng = random.Random(seed)
    wins = 0
    for _ in range(draws):
        mine = rng.gammavariate(first + 1, 1.0)
        wins += all(mine >= rng.gammavariate(c + 1, 1.0) for c in others)
    return wins / draws


def unbeatable(counts: dict[int, int], pending: int) -> bool:
    """The leader is ahead by more than the samples still to come: nothing can change it."""
    ranked = sorted(counts.values(), reverse=True) + [0, 0]
    return bool(counts) and ranked[0] - ranked[1] > pending


# ---------------------------------------------------------------- one sample's confidence


def cut_at(entropies: Sequence[float], window: int, max_entropy: float) -> int | None:
    """DeepConf's online trace stop: the number of tokens after which the mean entropy of the
    last `window` tokens first exceeds `max_entropy` (None: never, or window 0)."""
    if window < 1 or len(entropies) < window or math.isinf(max_entropy):
        return None
    total = sum(entropies[:window])
    if total / window > max_entropy:
        return window
    for t in range(window, len(entropies)):
        total += entropies[t] - entropies[t - window]
        if total / window > max_entropy:
            return t + 1
    return None


# ---------------------------------------------------------------- replay


def majority(answers: Sequence[int | None]) -> int | None:
    """Plain majority over the answers given; ties to the first seen (the solver's vote)."""
    counts: dict[int, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def replay(traces: Sequence[Trace], rule: StopRule, wave: int | Sequence[int] | None = None,
           trace: TraceStop | None = None) -> Replay:
    """Play the recorded samples of one problem under `rule`, in their order, `wave` at a time
    (None: all at once; a list: waves of those sizes, the last taking what is left); see the
    module docstring. The answer is the majority of the samples counted, in their order (ties
    as the solver breaks them). No traces (a problem that recorded no sample): no answer, no
    tokens."""
    n = len(traces)
    if n == 0:  # every path below indexes the first sample
        return Replay(None, 0, 0, False)
    if wave is None or isinstance(wave, int):
        size = n if wave is None or wave >= n else max(1, wave)
        starts = list(range(0, n, size))
    else:
        starts = [0]
        for w in wave:
            if starts[-1] + max(1, w) < n:
                starts.append(starts[-1] + max(1, w))
    # each sample's length under the rule, and whether the trace rule stopped it
    ends = []
    for i, t in enumerate(traces):
        cut = None if trace is None or i < trace.warmup else cut_at(
            t.entropies[: t.tokens], trace.window, trace.max_entropy)
        ends.append((cut, True) if cut is not None and cut < t.tokens else (t.tokens, False))
    counted: list[int] = []  # indices whose answers count, in finish order
    counts: dict[int, int] = {}
    tokens = finished = 0
    for first, end in zip(starts, starts[1:] + [n], strict=True):
        members = list(range(first, end))
        later = n - members[-1] - 1
        # finish order inside the wave: shortest first, ties by index
        order = sorted(members, key=lambda i: (ends[i][0], i))
        for rank, i in enumerate(order):
            length, was_cut = ends[i]
            finished += 1
            if not was_cut and traces[i].answer is not None:
                counts[traces[i].answer] = counts.get(traces[i].answer, 0) + 1
                counted.append(i)
            pending = len(order) - rank - 1 + later
            if pending and rule.should_stop(counts, pending):
                tokens += sum(min(ends[j][0], length) for j in members)
                answer = majority([traces[j].answer for j in sorted(counted)])
                return Replay(answer, tokens, finished, True)
        tokens += sum(ends[j][0] for j in members)
    return Replay(majority([traces[j].answer for j in sorted(counted)]), tokens, finished,
                  False)
