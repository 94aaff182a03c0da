"""Voting: each sample's weight and the problem's vote.

    vote(answers, weights, rules)  -> Vote   majority (or weighted), ties to the first seen
    tally(samples, config)         -> Vote   the solver's final vote over its samples

A sample weighs `code_ok_weight` when all its code ran cleanly (else 1), times its confidence
when `vote_weights` asks for one: exp(-sharpness * H) of its mean or tail token entropy, or
1/H (the AIMO 3 1st place's). "share_tail_tiebreak" (the AIMO 3 2nd place's) counts samples
and breaks a tie on the lowest median tail entropy of each answer's samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .answers import AIMO1, AnswerRules

if TYPE_CHECKING:
    from .presets import SolverConfig
    from .results import Sample

__all__ = ["MIN_ENTROPY", "Vote", "entropy_weight", "sample_weights", "tally", "vote"]

# 1/H of a sample that is all but certain would swamp every vote: H is floored here.
MIN_ENTROPY = 0.01


@dataclass
class Vote:
    answer: int  # the winner, or rules.fallback when nothing valid was given
    votes: dict[int, float] = field(default_factory=dict)  # answer -> count or total weight
    fallback: bool = False  # True when no valid answer existed


def vote(answers: Sequence[int | None], weights: Sequence[float] | None = None,
         rules: AnswerRules = AIMO1) -> Vote:
    """Majority (or weighted) vote over valid answers; ties go to the answer seen first.

    weights: one per answer, each finite and >= 0 (ValueError otherwise: a NaN has no place
    in a vote and would make it name no winner)."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict[int, float] = {}
    for i, a in enumerate(answers):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else _weight(weights[i], a))
    if not totals:
        return Vote(rules.fallback, {}, True)
    # max() keeps the first of equals, and dicts keep first-seen order: ties to the first seen
    return Vote(max(totals, key=totals.__getitem__), totals, False)


def _weight(w: object, answer: int) -> float:
    try:
        value = float(w)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the vote weight of answer {answer} is {w!r}: weights must be "
                         "finite and >= 0")
    return value


def entropy_weight(s: Sample, kind: str, sharpness: float = 1.0) -> float:
    """A sample's vote weight from its confidence: exp(-sharpness * H), H its mean token
    entropy ("mean_entropy") or that of its last tokens ("tail_entropy"), or 1/H of its mean
    token entropy ("inverse_entropy", H floored at MIN_ENTROPY); 1 where the engine
    gave no logprobs (every sample then counts alike), or where H or the sharpness is not a
    finite number. Always finite and >= 0."""
    h = s.tail_entropy if kind == "tail_entropy" else s.mean_entropy
    if h is None or not (math.isfinite(h) and math.isfinite(sharpness)):
        return 1.0
    if kind == "inverse_entropy":  # the AIMO 3 1st place's: each sample adds 1/H
        return 1.0 / max(h, MIN_ENTROPY)
    return math.exp(min(-sharpness * h, 700.0))  # a negative sharpness must not overflow


def sample_weights(samples: Sequence[Sample], cfg: SolverConfig) -> list[float]:
    """Each sample's vote weight (finite, >= 0): code_ok_weight for a sample whose code all
    ran cleanly, times its entropy weight when the config asks for one."""
    w = cfg.code_ok_weight
    weights = [w if s.code_calls and all(c.status == "ok" for c in s.code_calls) else 1.0
               for s in samples]
    if cfg.vote_weights in ("count", "share_tail_tiebreak"):
        return weights
    return [x * entropy_weight(s, cfg.vote_weights, cfg.entropy_sharpness)
            for x, s in zip(weights, samples, strict=True)]


def tally(samples: Sequence[Sample], cfg: SolverConfig) -> Vote:
    """The final vote over these samples: their answers, weighted (see sample_weights); with
    vote_weights "share_tail_tiebreak" the answers with the most votes tie-break on the
    median tail entropy of their samples, lowest first."""
    answers = [s.answer for s in samples]
    if cfg.vote_weights != "share_tail_tiebreak":
        return vote(answers, sample_weights(samples, cfg), rules=cfg.rules)
    counted = vote(answers, rules=cfg.rules)
    if counted.fallback:
        return counted
    top = max(counted.votes.values())
    tied = [a for a, n in counted.votes.items() if n == top]
    if len(tied) == 1:
        return counted

    def median_tail(answer: int) -> float:
        hs = sorted(s.tail_entropy for s in samples if s.answer == answer
                    and s.tail_entropy is not None and math.isfinite(s.tail_entropy))
        return hs[len(hs) // 2] if hs else math.inf  # no entropies: last, first-seen order

    return Vote(min(tied, key=median_tail), counted.votes, False)
