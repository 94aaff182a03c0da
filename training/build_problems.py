"""problems.jsonl (id, problem, integer answer) from NuminaMath-CoT/TIR rows: the problems
with checkable answers that KTO sampling and TIR data generation need.

    python -m training.build_problems --source AI-MO/NuminaMath-TIR --out runs/problems-tir.jsonl
    python -m training.build_problems --source rows.jsonl --out problems.jsonl \\
        --exclude $AIMO_DATA_DIR/aime_2022_2024.jsonl --exclude $AIMO_DATA_DIR/aimo1_train.jsonl

A row's reference answer is the last \\boxed{} of its solution (the assistant's turn of
`messages`, else the `solution` column), kept only when it is an exact integer ("12", "-3",
"1,000", "12.0"): a problem whose answer cannot be checked cannot label a sample. Problems
that also appear in an --exclude file (validation sets) are dropped, as are repeats. The counts
of rows kept and dropped, by reason, are printed and written to <out>.counts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter

from aimo_lib.answers import extract_boxed
from aimo_lib.records import read_rows

from .common import load_dataset_any, write_json

_INTEGER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?")


def integer_answer(boxed: str) -> int | None:
    """The integer a boxed answer states exactly, or None (fractions, expressions, words)."""
    s = boxed.strip().strip("$")
    for noise in ("\\!", "\\,", "{,}", " ", "\\ "):
        s = s.replace(noise, "" if noise != "{,}" else ",")
    if not _INTEGER.fullmatch(s):
        return None
    return int(s.replace(",", "").split(".")[0])


def _solution(row: dict) -> str | None:
    messages = row.get("messages")
    if isinstance(messages, list):
        turns = [m.get("content") for m in messages
                 if isinstance(m, dict) and m.get("role") == "assistant"]
        if turns and isinstance(turns[-1], str):
            return turns[-1]
    solution = row.get("solution")
    return solution if isinstance(solution, str) else None


def _key(problem: str) -> str:
    return " ".join(problem.split()).lower()


def reference(row) -> tuple[str, int] | str:
    """(problem, integer answer) of a row, or why it has none."""
    problem = row.get("problem") if isinstance(row, dict) else None
    if not isinstance(problem, str) or not problem.strip():
        return "no_problem"
    solution = _solution(row)
    if solution is None:
        return "no_solution"
    boxed = extract_boxed(solution)
    if boxed is None:
        return "no_boxed_answer"
    answer = integer_answer(boxed)
    return "not_an_integer" if answer is None else (problem, answer)


def build(rows, name: str, exclude: set[str]) -> tuple[list[dict], Counter]:
    """Kept problems, and counts: `kept` and one key per reason a row was dropped."""
    kept, counts, seen = [], Counter(), set()
    for i, row in enumerate(rows):
        got = reference(row)
        if isinstance(got, tuple):
            key = _key(got[0])
            got = ("in_an_excluded_set" if key in exclude else "duplicate" if key in seen
                   else got)
        if isinstance(got, str):
            counts[got] += 1
            continue
        seen.add(key)
        kept.append({"id": str(row.get("id", f"{name}-{i}")), "problem": got[0],
                     "answer": got[1]})
        counts["kept"] += 1
    return kept, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True,
                    help="a hub dataset (AI-MO/NuminaMath-TIR, AI-MO/NuminaMath-CoT) or a "
                    ".jsonl/.json/.parquet file with problem and messages or solution")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", required=True, help="the problems.jsonl to write")
    ap.add_argument("--exclude", action="append", default=[],
                    help="a .jsonl/.csv of problems to leave out (validation sets); repeatable")
    ap.add_argument("--limit", type=int, default=None, help="read only the first N rows")
    args = ap.parse_args()

    exclude = {_key(r["problem"]) for path in args.exclude for r in read_rows(path)
               if isinstance(r.get("problem"), str)}
    rows = load_dataset_any(args.source, args.split, args.limit)
    from tqdm.auto import tqdm

    name = os.path.splitext(os.path.basename(args.source.rstrip("/")))[0]
    kept, counts = build(tqdm(rows, desc="rows", total=len(rows)), name, exclude)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        for row in kept:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(args.out + ".tmp", args.out)
    report = {"source": args.source, "rows": sum(counts.values()), **counts}
    write_json(args.out + ".counts.json", report)
    dropped = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "kept") or "none"
    print(f"{args.out}: kept {counts['kept']} of {report['rows']} rows; dropped: {dropped}")


if __name__ == "__main__":
    main()
