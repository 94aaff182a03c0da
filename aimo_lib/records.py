"""Run records: JSONL files appended one durable line at a time, read back after a crash,
and the problem files (.jsonl or .csv) that runs read.

    append_jsonl("runs/x/results.jsonl", {"id": "p1", "answer": 42})
    read_jsonl("runs/x/results.jsonl")   # [] before the first record; torn lines skipped
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

__all__ = ["Records", "append_jsonl", "log", "read_jsonl", "read_rows"]


def log(message: str) -> None:
    """The run's log line (stderr, flushed: Kaggle keeps it even when the kernel dies)."""
    print(f"[aimo] {message}", file=sys.stderr, flush=True)


def read_jsonl(path: str) -> list[dict]:
    """Records appended with append_jsonl; [] if the file does not exist yet. A line torn by
    a crash is skipped (its record is simply redone)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


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
        """The keys of the records that did not fail (a failed one is redone on a rerun)."""
        return {tuple(r.get(k) for k in key) for r in self.read()
                if isinstance(r, dict) and not r.get("failed")}
