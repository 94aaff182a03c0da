"""Kaggle's evaluation APIs behind one call, and what the notebook finds on Kaggle by itself.

    config = load_config(globals())     # the notebook's settings, then competition/model found
    runner = make_runner(config)        # lazy: the model loads in the first problem
    serve(runner)                       # whichever API is present, else our gateway

- AIMO 1 (`aimo` module, in the competition's rerun): make_env() / iter_test() / predict().
- AIMO 2 and 3 (`kaggle_evaluation`): an inference server around the module-level `predict`
  below, called from a gRPC worker thread; in a rerun `serve()`, else the local gateway of
  `kaggle_evaluation` over the competition's test.csv.
- Anywhere else: `aimo_lib.kaggle.gateway.LocalGateway` over a problem file (default: the sample
  problems shipped with aimo_lib), with a score when answers are known.

Every path answers through `aimo_lib.run.Runner`: a solve that fails, for any reason, submits
the fallback answer (its traceback goes to results.jsonl and the log), a dead engine is
restarted, and the run goes on.

Kaggle's input folder is /kaggle/input, or $AIMO_KAGGLE_INPUT (`aimo-kaggle rehearse` lays
out a Kaggle-like one there): the competition whose data is attached there is the run's when
COMPETITION is auto, and the model is found there when MODEL is auto, in the Models layout
(<model>/<framework>/<variation>/<version>/config.json) or as a Dataset
(<slug>/[<folder>/...]config.json).
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import replace

from ..competitions import COMPETITIONS, get_competition
from ..config import RunConfig
from ..records import log, read_rows
from ..resolve import NoModelAttached, Probe, machine_probe, resolve
from ..run import Runner
from .gateway import LocalGateway, Report, load_problems

__all__ = ["find_competition", "find_model", "is_rerun", "kaggle_input", "kaggle_probe",
           "kaggle_resolve", "load_config", "make_runner", "predict", "serve"]

# Newest first: where several are attached, the latest competition is the one being run.
_NEWEST_FIRST = ("aimo3", "aimo2", "aimo1")


def is_rerun() -> bool:
    """True inside Kaggle's scoring rerun of a competition notebook."""
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def kaggle_input() -> str:
    """Where Kaggle mounts attached data: /kaggle/input, or $AIMO_KAGGLE_INPUT."""
    return os.environ.get("AIMO_KAGGLE_INPUT") or "/kaggle/input"


def on_kaggle() -> bool:
    return os.path.isdir(kaggle_input())


def _api_module(competition: str) -> str:
    server = get_competition(competition).server
    return server[0] if server else "aimo"


def _api_present(competition: str) -> bool:
    """The competition's evaluation API can be imported: installed, or in its data folder
    (attached competition data brings the package), which then goes on sys.path."""
    module = _api_module(competition)
    try:
        if importlib.util.find_spec(module) is not None:
            return True
    except (ImportError, ValueError):  # a parent package that is not there
        pass
    folder = os.path.join(kaggle_input(), get_competition(competition).kaggle_dir)
    top = module.split(".")[0]
    if not (os.path.isdir(os.path.join(folder, top)) or
            os.path.isfile(os.path.join(folder, top + ".py"))):
        return False
    if folder not in sys.path:
        sys.path.append(folder)
        importlib.invalidate_caches()
    return True


def find_competition() -> str | None:
    """The competition whose data is attached (its folder under the input folder, or its
    evaluation API importable), newest first; None when there is none."""
    for name in _NEWEST_FIRST:
        if os.path.isdir(os.path.join(kaggle_input(), get_competition(name).kaggle_dir)):
            return name
    for name in _NEWEST_FIRST:
        if _api_present(name):
            return name
    return None


# Weights a checkpoint folder may hold; files of a training run that are not weights.
_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")


def _inspect_checkpoint(path: str) -> tuple[bool, str]:
    """(whether `path` is a complete checkpoint, what it holds): config.json beside weights,
    or beside an index (*.index.json) whose files are all there. A folder with config.json
    and a tokenizer only (a base model's files, a tokenizer dataset) has no model in it."""
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        return False, f"unreadable ({exc.strerror})"
    if "config.json" not in names:
        return False, "no config.json"
    indexes = [n for n in names if n.endswith(".index.json")]
    for index in indexes:  # a sharded checkpoint: every shard it names must be there
        try:
            with open(os.path.join(path, index), encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False, f"{index} is not a weights index"
        missing = [f for f in files if not os.path.isfile(os.path.join(path, str(f)))]
        if missing or not files:
            return False, (f"{index} names {len(files)} files, {len(missing)} missing (e.g. "
                           f"{missing[0]})" if missing else f"{index} names no files")
        return True, f"weights: {len(files)} files named by {index}"
    weights = [n for n in names if n.endswith(_WEIGHTS) and not n.startswith(_NOT_WEIGHTS)
               and os.path.isfile(os.path.join(path, n))]
    if weights:
        return True, f"weights: {', '.join(weights[:3])}" + (
            f" and {len(weights) - 3} more" if len(weights) > 3 else "")
    return False, "config.json but no weights (" + (", ".join(names[:6]) or "nothing else") + (
        ", ..." if len(names) > 6 else "") + ")"


def find_model(max_depth: int = 5) -> str | None:
    """A model attached to the notebook: the shallowest folder under the input folder (breadth
    first, names sorted, at most `max_depth` deep) holding a complete checkpoint (config.json
    and weights: _inspect_checkpoint), in the Models layout or uploaded as a Dataset; the
    competition's data and the wheels dataset are skipped. Every folder with a config.json
    seen on the way is logged with what it holds, and the choice with why."""
    root = kaggle_input()
    if not os.path.isdir(root):
        return None
    skip = {c.kaggle_dir for c in COMPETITIONS.values()}
    level = [os.path.join(root, d) for d in sorted(os.listdir(root)) if d not in skip]
    seen, found = [], []
    for _ in range(max_depth):
        for d in level:
            if os.path.isdir(d) and os.path.isfile(os.path.join(d, "config.json")):
                complete, what = _inspect_checkpoint(d)
                seen.append((d, complete, what))
                if complete:
                    found.append(d)
        if found:
            break
        level = [os.path.join(d, n) for d in level if os.path.isdir(d)
                 and not glob.glob(os.path.join(d, "aimo_lib-*.whl"))
                 for n in _listdir(d)]
    for d, complete, what in seen:
        log(f"model candidate {d}: {what}" + ("" if complete else "; not a model, skipped"))
    if not found:
        if seen:
            log(f"no complete checkpoint under {root} (config.json and weights: *.safetensors, "
                "*.bin, *.gguf, *.pt/.pth, or an index naming them)")
        return None
    why = ("the only complete checkpoint" if len(seen) == 1 else
           "the only complete checkpoint found" if len(found) == 1 else
           f"the first in name order of {len(found)} complete checkpoints at the same depth; "
           "set MODEL to choose")
    log(f"using the model at {found[0]}: {why}")
    return found[0]


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:  # a folder we may not read is no model
        return []


def kaggle_probe(model: bool = True) -> Probe:
    """What this machine offers a run: on Kaggle the competition whose data is attached and
    the attached model (looked for only if `model`: MODEL is auto), the GPU, vLLM."""
    problems = {c: path for c in COMPETITIONS if (path := _attached_problems(c)) is not None}
    return replace(machine_probe(), competition=find_competition(),
                   model=find_model() if model else None,
                   inputs=kaggle_input() if on_kaggle() else None, rerun=is_rerun(),
                   problems=problems)


def load_config(notebook: dict | None = None, **values) -> RunConfig:
    """The notebook's run configuration: its UPPERCASE parameters (None: not given), AIMO_*
    variables and `values`, resolved with what Kaggle offers (kaggle_probe)."""
    return kaggle_resolve(RunConfig.load(notebook=notebook, values=values))


def kaggle_resolve(config: RunConfig) -> RunConfig:
    """`config` resolved with what this machine offers, Kaggle's attached inputs included (a
    resolved config as it is: the probe scans the input folder and logs what it finds)."""
    if config.resolved is not None:
        return config
    return resolve(config, kaggle_probe(model=config.model == "auto"))


def make_runner(config: RunConfig, engine=None, **kwargs) -> Runner:
    """The run's Runner: the competition's TimeBudget (TOTAL_HOURS, start-up and reserve
    kept), results.jsonl in OUT_DIR, config.json beside it. Nothing heavy happens until the
    first problem (so an AIMO 2/3 server starts within Kaggle's 15 minutes). An unresolved
    config is resolved here with what Kaggle offers (see load_config)."""
    from ..budget import TimeBudget

    config = kaggle_resolve(config)
    os.makedirs(config.out_dir, exist_ok=True)
    budget = None if config.time_limit_s is not None else TimeBudget.for_run(
        config.competition, config.total_hours, policy=config.time_policy)
    if engine is None and config.model is None and on_kaggle() and (
            config.engine.kind != "openai"):
        engine = _no_model  # resolve() said why: answer the fallback at once, each problem
    runner = Runner(config, engine=engine, budget=budget,
                    records=os.path.join(config.out_dir, "results.jsonl"), **kwargs)
    with open(os.path.join(config.out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"run": config.to_dict(), "solver": config.solver_config().to_dict()}, f,
                  indent=2, default=str)
    return runner


def _no_model():
    raise NoModelAttached(f"no model is attached under {kaggle_input()}")


# ---------------------------------------------------------------- AIMO 2 / 3

_runner: Runner | None = None


def _scalar(column):
    """The single value of a one-row polars/pandas Series (or a plain value)."""
    return column.to_list()[0] if hasattr(column, "to_list") else column


def predict(id_, problem, *rest):
    """The AIMO 2/3 inference servers' callback: a plain module-level function named `predict`
    (they reject lambdas, partials and bound methods). One polars Series per CSV column.
    Never raises (but KeyboardInterrupt): an exception here would stop Kaggle's gateway and
    lose the submission."""
    import polars as pl

    if _runner is None:
        raise RuntimeError("aimo_lib.kaggle.serve.serve() must be called before predict()")
    try:
        problem_id, text = str(_scalar(id_)), str(_scalar(problem))
    except Exception:  # noqa: BLE001 - malformed input: still answer the row
        problem_id, text = str(id_), str(problem)
    try:
        answer = _runner.solve(text, problem_id).answer  # never raises but KeyboardInterrupt
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - belt and braces: the row is still answered
        answer = _runner.rules.fallback
        log(f"{problem_id}: solve() raised {type(exc).__name__}: {exc}; answering {answer}")
    return pl.DataFrame({"id": [problem_id], "answer": [answer]})


def _attached_problems(competition: str) -> str | None:
    """The competition's problem CSV where its data is attached; None where it is not."""
    kaggle_dir = os.path.join(kaggle_input(), get_competition(competition).kaggle_dir)
    for name in ("test.csv", "train.csv", "reference.csv"):
        path = os.path.join(kaggle_dir, name)
        if os.path.exists(path):
            return path
    return None


def _api_for(competition: str) -> str | None:
    """The competition whose evaluation API this run will drive: the configured one when it
    is present, else (loudly) another one that is; None when none is."""
    if _api_present(competition):
        return competition
    other = next((c for c in _NEWEST_FIRST if _api_present(c)), None)
    if other is not None:
        log(f"!!! COMPETITION is {competition}, but its evaluation API is not attached; "
            f"{other}'s is: serving {other} (attach the right competition's data, or set "
            "COMPETITION, to silence this)")
    return other


def serve(runner: Runner) -> Report | None:
    """Drive whichever evaluation API is present for the runner's competition.

    Returns the local gateway's Report when our gateway ran (off Kaggle's APIs), else None.
    In a scoring rerun of AIMO 2/3 this never returns: Kaggle's server blocks while its
    gateway sends the problems (and the notebook is stopped afterwards).
    """
    global _runner
    config = runner.config
    competition = config.competition
    if is_rerun():
        api = _api_for(competition)
        if api is None:
            raise RuntimeError(
                f"a {competition} scoring rerun, but no competition's evaluation API can be "
                "imported: attach the competition's data to the notebook (it provides the "
                "`aimo` module for AIMO 1, `kaggle_evaluation` for AIMO 2 and 3)")
        if api != competition:
            runner.set_competition(api)
            competition = api
    server_class = get_competition(competition).server
    if is_rerun() and server_class is None:
        import aimo  # shipped with the AIMO 1 competition data

        env = aimo.make_env()
        for test, sample_submission in env.iter_test():
            try:
                problem_id, text = str(test["id"].values[0]), str(test["problem"].values[0])
            except Exception:  # noqa: BLE001 - malformed input: still answer the row
                problem_id, text = "?", str(test)
            sample_submission["answer"] = runner.solve(text, problem_id).answer
            env.predict(sample_submission)
        return None
    if server_class and (is_rerun() or _api_present(competition)):
        module, name = server_class
        _runner = runner
        server = getattr(importlib.import_module(module), name)(predict)
        if is_rerun():
            log(f"{competition} scoring rerun: serving predict() to Kaggle's gateway")
            server.serve()
        else:
            path = config.problems
            if path.endswith((".csv", ".jsonl")) and os.path.exists(path):
                runner.expect(len(read_rows(path)))
            server.run_local_gateway((path,))
        return None
    gateway = LocalGateway(load_problems(config.problems, config.limit),
                           competition, seed=config.seed, out_dir=config.out_dir)
    runner.expect(len(gateway.problems))
    report = gateway.run(runner)
    print(report.table(), flush=True)
    return report
