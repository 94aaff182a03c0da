"""The AIMO competitions, one record each: what counts as an answer, the time and problems,
where Kaggle mounts the data, which evaluation server drives the notebook, the machine.

    c = get_competition("aimo3")
    c.rules.apply(123456)   # None: out of range (answers 0..99999, no modulus)
    c.total_s, c.problems, c.kaggle_dir, c.server, c.hardware, c.machine_shape

Facts from docs/reference.md section 3. Every module asks here; a new competition is one
new entry.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from .answers import AIMO1, AIMO2, AIMO3, AnswerRules

__all__ = ["COMPETITIONS", "Competition", "InvalidAnswer", "get_competition", "validate_answer"]


@dataclass(frozen=True)
class Competition:
    name: str
    rules: AnswerRules  # which answers are valid, and the modulus applied to them
    hours: float  # the whole run, start-up included
    problems: int
    kaggle_dir: str  # under /kaggle/input
    # (module, class) of the kaggle_evaluation inference server; None: the `aimo` module's
    # env.iter_test() loop (AIMO 1)
    server: tuple[str, str] | None
    hardware: str
    # kernel-metadata.json's machine_shape for that hardware; None where not confirmed (the
    # metadata's own value is kept). "NvidiaTeslaT4" is Kaggle's documented T4 x2;
    # "NvidiaH100" is what public AIMO 3 push scripts use (not in Kaggle's docs reachable here)
    machine_shape: str | None = None

    @property
    def total_s(self) -> float:
        return self.hours * 3600

    @property
    def answer_instruction(self) -> str:
        """The answer rules as every prompt states them (SolverConfig.state_answer_rules)."""
        low, high = self.answer_range
        if self.rules.modulus:
            return (f"The answer is a non-negative integer: give it modulo {self.rules.modulus}"
                    f" (its remainder, from {low} to {high}).")
        return (f"The answer is an integer from {low} to {high}; where the problem asks for a "
                "remainder, reduce it as the problem says.")

    @property
    def answer_range(self) -> tuple[int, int]:
        """The smallest and largest answer the gateway accepts."""
        hi = self.rules.modulus - 1 if self.rules.modulus else self.rules.max_value
        return self.rules.min_value, hi


COMPETITIONS = {c.name: c for c in (
    Competition("aimo1", AIMO1, 9, 50, "ai-mathematical-olympiad-prize", None, "2xT4",
                "NvidiaTeslaT4"),
    Competition("aimo2", AIMO2, 5, 50, "ai-mathematical-olympiad-progress-prize-2",
                ("kaggle_evaluation.aimo_2_inference_server", "AIMO2InferenceServer"), "4xL4"),
    Competition("aimo3", AIMO3, 5, 50, "ai-mathematical-olympiad-progress-prize-3",
                ("kaggle_evaluation.aimo_3_inference_server", "AIMO3InferenceServer"),
                "1xH100", "NvidiaH100"),
)}


def get_competition(name: str) -> Competition:
    if name not in COMPETITIONS:
        raise ValueError(f"unknown competition {name!r}; choose from {sorted(COMPETITIONS)}")
    return COMPETITIONS[name]


class InvalidAnswer(ValueError):
    """An answer Kaggle's gateway would reject (not an integer, or out of range)."""


def validate_answer(answer, competition: str) -> int:
    """The answer as an int, or InvalidAnswer if the competition's gateway would reject it."""
    if isinstance(answer, bool):
        raise InvalidAnswer(f"answer {answer!r} is a bool, not an integer")
    try:
        value = operator.index(answer)  # int, numpy integers; not floats or strings
    except TypeError:
        raise InvalidAnswer(f"answer {answer!r} ({type(answer).__name__}) is not an integer"
                            ) from None
    lo, hi = get_competition(competition).answer_range
    if not lo <= value <= hi:
        raise InvalidAnswer(f"answer {value} is outside {lo}..{hi}, the range for "
                            f"{competition}; apply the competition's answer rules first")
    return value
