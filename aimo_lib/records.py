"""Run records: JSONL files appended one durable line at a time, read back after a crash,
and the problem files (.jsonl or .csv) that runs read.

    append_jsonl("runs/x/results.jsonl", {"id": "p1", "answer": 42})
    read_jsonl("runs/x/results.jsonl")   # [] before the first record; bad lines skipped
    records = Records("runs/x/results.jsonl")
    records.append({...})                 # never raises: a full disk is logged, not fatal
    records.done(("id", "seed"))          # keys recorded and not failed: what a rerun skips
"""

from __future__ import annotations

import csv
import json
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["Records", "append_jsonl", "log", "read_jsonl", "read_rows"]


def log(message: str) -> None:
    """The run's log line (stderr, flushed: Kaggle keeps it even when the kernel dies)."""
    print(f"[aimo] {message}", file=sys.stderr, flush=True)


def read_jsonl(path: str, key: tuple[str, ...] = (),
               check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """Records appended with append_jsonl; [] if the file does not exist yet.

    A line that is no record is skipped with a log line naming its line number, and its
    problem is simply redone: a line torn by a crash, bytes that are not UTF-8, JSON that is
    not an object (a bare number, a list), a record without `key`'s first field (its
    identity, e.g. "id") or with a key field that is not a string or an integer (later key
    fields may also be None: "seed"), and one that `check(row)` says is wrong (it returns
    why, or None)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                why = "not UTF-8"
            except (ValueError, RecursionError) as exc:  # also: huge numbers, deep nesting
                why = f"not valid JSON ({getattr(exc, 'msg', exc)}): torn by a crash?"
            else:
                why = _record_problem(row, key) or (check(row) if check else None)
                if why is None:
                    rows.append(row)
                    continue
            log(f"{path}:{n}: {why}; the line is skipped (its problem is redone)")
    return rows


def _record_problem(row: object, key: tuple[str, ...]) -> str | None:
    """Why `row` is no record keyed by `key` (None: it is one)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not a record (an object)"
    for i, name in enumerate(key):
        value = row.get(name)
        if value is None:
            if i == 0:
                return f"no {name!r}"
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return f"its {name!r} is a {type(value).__name__}, not a string or an integer"
    return None


def read_rows(path: str) -> list[dict]:
    """Rows of a .jsonl or .csv file, with clear errors for anything else."""
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        return rows
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: expected a .jsonl or .csv file of problems")


def append_jsonl(path: str, record: dict) -> None:
    """Append one record durably. A line torn by an earlier crash is closed off first, so
    it costs only its own record."""
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        torn = False
        if end:
            f.seek(end - 1)
            torn = f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


class Records:
    """One run's JSONL records (results.jsonl, samples.jsonl): appended one durable line at a
    time from any thread; read back to resume."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def append(self, record: dict) -> bool:
        """Write one record; False (and a log line) when it could not be written: a full disk
        or a broken file costs the record, never the answer that goes out."""
        if not self.path:
            return True
        try:
            with self._lock:
                append_jsonl(self.path, record)
            return True
        except (OSError, TypeError, ValueError) as exc:
            log(f"could not write a record to {self.path} ({type(exc).__name__}: {exc}); the "
                "answer still goes out")
            return False

    def read(self) -> list[dict]:
        return read_jsonl(self.path) if self.path else []

    def done(self, key: tuple[str, ...] = ("id",)) -> set[tuple]:
        """The keys of the records that did not fail (a failed one is redone on a rerun, and
        so is a malformed one: read_jsonl)."""
        if not self.path:
            return set()
        return {tuple(r.get(k) for k in key) for r in read_jsonl(self.path, key)
                if not r.get("failed")}
