"""Stand-in for AIMO 1's `aimo` module, written from its documented contract (not Kaggle's
code): make_env(); env.iter_test() yields (test, sample_submission) pandas DataFrames for one
problem at a time, in random order; env.predict(sample_submission) must come before the next.
Problems come from the JSONL file named by $KAGGLE_STANDIN_PROBLEMS."""

import json
import os
import random

import pandas as pd

predictions: list[tuple[str, int]] = []  # what predict() received, for the tests to check


class _Env:
    def __init__(self):
        with open(os.environ["KAGGLE_STANDIN_PROBLEMS"]) as f:
            self._rows = [json.loads(line) for line in f if line.strip()]
        random.Random(os.environ.get("KAGGLE_STANDIN_SEED", "0")).shuffle(self._rows)
        self._pending = None

    def iter_test(self):
        for row in self._rows:
            if self._pending is not None:
                raise RuntimeError("You must call `predict()` successfully before you can "
                                   "continue with `iter_test()`")
            self._pending = row["id"]
            yield (pd.DataFrame({"id": [row["id"]], "problem": [row["problem"]]}),
                   pd.DataFrame({"id": [row["id"]], "answer": [0]}))

    def predict(self, sample_submission):
        if list(sample_submission.columns) != ["id", "answer"] or len(sample_submission) != 1:
            raise ValueError("predict() takes the sample_submission DataFrame with id, answer")
        problem_id = sample_submission["id"].values[0]
        answer = sample_submission["answer"].values[0]
        if problem_id != self._pending:
            raise ValueError(f"predict() for {problem_id}, expected {self._pending}")
        if not 0 <= int(answer) <= 999 or int(answer) != answer:
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
