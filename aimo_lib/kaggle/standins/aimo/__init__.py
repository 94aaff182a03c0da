"""Stand-in for AIMO 1's `aimo` module, written from its documented contract (not Kaggle's
code): make_env() once; env.iter_test() yields (test, sample_submission) pandas DataFrames for
one problem at a time, in random order; env.predict(sample_submission) must come before the
next. The problems are the test.csv beside this package (the competition's data folder)."""

import os
import random

import pandas as pd

predictions: list[tuple[str, int]] = []  # what predict() received


class _Env:
    def __init__(self):
        path = os.environ.get("KAGGLE_STANDIN_PROBLEMS") or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test.csv")
        self._rows = pd.read_csv(path, dtype={"id": str}).to_dict("records")
        seed = os.environ.get("KAGGLE_STANDIN_SEED")
        random.Random(int(seed) if seed else None).shuffle(self._rows)
        self._pending = None

    def iter_test(self):
        for row in self._rows:
            if self._pending is not None:
                raise RuntimeError("You must call `predict()` successfully before you can "
                                   "continue with `iter_test()`")
            self._pending = row["id"]
            yield (pd.DataFrame({"id": [row["id"]], "problem": [row["problem"]]}),
                   pd.DataFrame({"id": [row["id"]], "answer": [0]}))
        if self._pending is not None:
            raise RuntimeError("the last problem was not answered with predict()")
        pd.DataFrame(predictions, columns=["id", "answer"]).to_csv("submission.csv",
                                                                   index=False)

    def predict(self, sample_submission):
        if list(sample_submission.columns) != ["id", "answer"] or len(sample_submission) != 1:
            raise ValueError("predict() takes the sample_submission DataFrame with id, answer")
        problem_id = sample_submission["id"].values[0]
        answer = sample_submission["answer"].values[0]
        if problem_id != self._pending:
            raise ValueError(f"predict() for {problem_id}, expected {self._pending}")
        if int(answer) != answer or not 0 <= int(answer) <= 999:
            raise ValueError(f"answers are integers in 0..999, got {answer!r}")
        predictions.append((problem_id, int(answer)))
        self._pending = None


_made = False


def make_env():
    global _made
    if _made:
        raise RuntimeError("make_env() can only be called once")
    _made = True
    return _Env()
