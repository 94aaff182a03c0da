"""One record per competition: every module reads the same facts from it."""

import pytest

from aimo_lib import SolverConfig
from aimo_lib.budget import TimeBudget
from aimo_lib.competitions import COMPETITIONS, InvalidAnswer, get_competition, validate_answer
from aimo_lib.config import RunConfig
from aimo_lib.kaggle.gateway import LocalGateway
from aimo_lib.run import Runner


@pytest.mark.parametrize("name", sorted(COMPETITIONS))
def test_every_module_agrees_with_the_record(name):
    c = get_competition(name)
    lo, hi = c.answer_range
    assert validate_answer(lo, name) == lo and validate_answer(hi, name) == hi
    with pytest.raises(InvalidAnswer):
        validate_answer(hi + 1, name)
    # what the solver's rules let through, the gateway accepts
    assert c.rules.apply(hi) == hi and lo <= c.rules.apply(hi + 1 if c.rules.modulus else hi) <= hi
    assert SolverConfig(competition=name).rules.apply(hi) == hi
    assert TimeBudget.for_competition(name).total_s == c.hours * 3600
    assert TimeBudget.for_run(name).n_problems == c.problems
    assert c.kaggle_dir.startswith("ai-mathematical-olympiad")
    assert (c.server is None) == (name == "aimo1")  # AIMO 1 ran the `aimo` module's loop


def test_facts_of_the_three_competitions():
    aimo1, aimo3 = get_competition("aimo1"), get_competition("aimo3")
    assert aimo1.answer_range == (0, 999) and aimo1.rules.apply(1234) == 234
    assert aimo3.answer_range == (0, 99999) and aimo3.rules.apply(123456) is None
    assert (aimo1.hours, aimo3.hours, aimo3.hardware) == (9, 5, "1xH100")


@pytest.mark.parametrize("make", [
    lambda: SolverConfig(competition="aimo4").rules,
    lambda: TimeBudget.for_run("aimo4"),
    lambda: LocalGateway([], "aimo4"),
    lambda: Runner(RunConfig(competition="aimo4"), solve_fn=lambda p, i, limit: 0),
    lambda: validate_answer(1, "aimo4"),
])
def test_an_unknown_competition_is_named_with_the_choices(make):
    with pytest.raises(ValueError, match="unknown competition 'aimo4'; choose from|"
                       "competition='aimo4' is not allowed: it takes one of .*aimo1, aimo2, aimo3"):
        make()
