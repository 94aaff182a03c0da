"""A local stand-in for Kaggle's evaluation gateway, plus what a competitor needs.

    gateway = LocalGateway(load_problems("samples"), competition="aimo1", out_dir="runs/demo")
    report = gateway.run(runner)         # aimo_lib.run.Runner: runner.solve(text, id) -> Outcome

Like the real gateways: problems come in a shuffled (seeded) order, one at a time, and the
next one comes only after the previous was answered; answers must be integers in the
competition's range; an optional per-problem timeout; a submission file (`submission.csv`,
and `submission.parquet` for AIMO 2/3). Beyond them: a score and a per-problem table when
reference answers are known, and resumability (answered problems are skipped on a rerun).
"""

from __future__ import annotations

import csv
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources

from ..competitions import InvalidAnswer, get_competition, validate_answer
from ..records import append_jsonl, read_jsonl, read_rows

__all__ = ["GatewayError", "LocalGateway", "Problem", "Report", "check_limit", "load_problems"]


class GatewayError(RuntimeError):
    """The protocol was broken (an answer out of range, predict skipped, a timeout)."""


@dataclass
class Problem:
    id: str
    problem: str
    answer: int | None = None  # the reference answer, when known


def check_limit(limit: object) -> int | None:
    """`limit` as the number of problems to serve: None (all) or an integer >= 1. A slice
    would take a negative one as "all but the last N", and 0 as all: refused instead."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit={limit!r}: give the number of problems to serve, a whole "
                         "number >= 1 (or none: every problem)")
    return limit


def load_problems(source: str, limit: int | None = None) -> list[Problem]:
    """Problems from a .jsonl/.csv file with `id` and `problem` (and optionally `answer`)
    columns, or "samples" for the easy problems shipped with aimo_lib; the first `limit`
    (check_limit) when given."""
    limit = check_limit(limit)
    if source == "samples":
        path = str(resources.files("aimo_lib") / "data" / "sample_problems.jsonl")
    elif not os.path.exists(source):
        raise FileNotFoundError(f"no problem file at {source!r} (use a .jsonl/.csv path or "
                                "'samples')")
    else:
        path = source
    problems = []
    for n, row in enumerate(read_rows(path), 1):
        if not isinstance(row, dict) or "problem" not in row or "id" not in row:
            raise ValueError(f"{path}: row {n} needs 'id' and 'problem' fields, got "
                             f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
        answer = row.get("answer")
        if answer not in (None, ""):
            try:
                answer = int(str(answer).strip())
            except ValueError:
                raise ValueError(f"{path}: row {n} ({row['id']}): answer {answer!r} is not an "
                                 "integer") from None
        problems.append(Problem(str(row["id"]), str(row["problem"]),
                                None if answer in (None, "") else answer))
    return problems[:limit] if limit else problems


@dataclass
class Report:
    competition: str
    rows: list[dict] = field(default_factory=list)  # one per problem, in the order served
    out_dir: str = ""

    @property
    def scored(self) -> list[dict]:
        return [r for r in self.rows if r.get("truth") is not None]

    @property
    def score(self) -> int:
        return sum(r["correct"] for r in self.scored)

    def table(self) -> str:
        lines = [f"{'id':<14}{'answer':>8}{'truth':>8}  {'ok':<3}{'time s':>8}  votes"]
        for r in self.rows:
            truth = "" if r.get("truth") is None else r["truth"]
            ok = "" if r.get("truth") is None else ("yes" if r["correct"] else "no")
            votes = ", ".join(f"{a}:{v:g}" for a, v in list(r.get("votes", {}).items())[:4])
            lines.append(f"{r['id'][:14]:<14}{r['answer']:>8}{truth:>8}  {ok:<3}"
                         f"{r['elapsed_s']:>8.1f}  {votes}")
        if self.scored:
            lines.append(f"score: {self.score}/{len(self.scored)}")
        return "\n".join(lines)


class LocalGateway:
    """Serves problems one at a time, like Kaggle's gateway; see the module docstring."""

    def __init__(self, problems: list[Problem], competition: str = "aimo1", *, seed: int = 0,
                 timeout_s: float | None = None, out_dir: str = "submission",
                 resume: bool = True, shuffle: bool = True):
        get_competition(competition)  # a clear error now for a name that is not one
        ids = [p.id for p in problems]
        if len(set(ids)) != len(ids):
            raise ValueError("problem ids must be unique")
        self.competition, self.timeout_s, self.out_dir = competition, timeout_s, out_dir
        self.problems = list(problems)
        if shuffle:
            random.Random(seed).shuffle(self.problems)
        os.makedirs(out_dir, exist_ok=True)
        self._progress = os.path.join(out_dir, "gateway_progress.jsonl")
        if not resume and os.path.exists(self._progress):
            os.remove(self._progress)
        self._done = {row["id"]: row for row in read_jsonl(self._progress, ("id",),
                                                            self._malformed)}
        self._waiting: Problem | None = None
        self._served_at = 0.0

    def _malformed(self, row: dict) -> str | None:
        """Why a progress line cannot stand for its problem's answer (None: it can); such a
        problem is served again."""
        try:
            validate_answer(row.get("answer"), self.competition)
        except InvalidAnswer as exc:
            return str(exc)
        elapsed = row.get("elapsed_s")
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)):
            return "no elapsed_s"
        if not isinstance(row.get("votes", {}), dict):
            return "its votes are not a mapping"
        if row.get("truth") is not None and not isinstance(row.get("correct"), bool):
            return "a truth without a correct flag"
        return None

    def iter_test(self) -> Iterator[Problem]:
        """Yields unanswered problems; each must be answered with predict() first."""
        for p in self.problems:
            if p.id in self._done:
                continue
            self._waiting, self._served_at = p, time.monotonic()
            yield p
            if self._waiting is not None:
                raise GatewayError(f"predict() was not called for problem {p.id} before "
                                   "asking for the next one")

    def predict(self, problem_id: str, answer, result=None, error: str | None = None) -> None:
        """Answer the problem just served. `result` (a SolveResult) adds votes to the table;
        `error`: why the answer is a fallback (solving failed)."""
        p = self._waiting
        if p is None or p.id != problem_id:
            raise GatewayError(f"predict() for {problem_id!r}, but the problem being served is "
                               f"{None if p is None else p.id!r}")
        elapsed = time.monotonic() - self._served_at
        if self.timeout_s is not None and elapsed > self.timeout_s:
            raise GatewayError(f"problem {p.id} took {elapsed:.0f} s, over the {self.timeout_s:g}"
                               " s limit per problem")
        try:
            value = validate_answer(answer, self.competition)
        except InvalidAnswer as exc:
            raise GatewayError(str(exc)) from None
        row = {"id": p.id, "answer": value, "truth": p.answer, "elapsed_s": round(elapsed, 3),
               "correct": p.answer is not None and value == p.answer % (
                   get_competition(self.competition).answer_range[1] + 1),
               "votes": {str(k): v for k, v in (getattr(result, "votes", None) or {}).items()},
               "error": error.strip().splitlines()[-1] if error else None}
        append_jsonl(self._progress, row)
        self._done[p.id] = row
        self._waiting = None
        self._write_submission()

    def run(self, runner) -> Report:
        """Serve every problem to runner.solve(problem, id) -> run.Outcome (an answer valid for
        the competition, whatever solving did: aimo_lib.run.Runner); write the files."""
        for p in self.iter_test():
            out = runner.solve(p.problem, p.id)
            self.predict(p.id, out.answer, out.result, out.error)
        report = Report(self.competition, [self._done[p.id] for p in self.problems
                                           if p.id in self._done], self.out_dir)
        with open(os.path.join(self.out_dir, "report.txt"), "w", encoding="utf-8") as f:
            f.write(report.table() + "\n")
        return report

    def _write_submission(self) -> None:
        rows = [(p.id, self._done[p.id]["answer"]) for p in self.problems if p.id in self._done]
        path = os.path.join(self.out_dir, "submission.csv")
        with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "answer"])
            w.writerows(rows)
        os.replace(path + ".tmp", path)
        if self.competition in ("aimo2", "aimo3"):
            import polars as pl

            pl.DataFrame({"id": [r[0] for r in rows], "answer": [r[1] for r in rows]}
                         ).write_parquet(os.path.join(self.out_dir, "submission.parquet"))
