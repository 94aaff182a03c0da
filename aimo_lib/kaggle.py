"""Kaggle's evaluation APIs behind one call, and what the notebook configures.

    config = NotebookConfig.from_env()          # AIMO_* environment variables / overrides
    solve = make_solve_fn(config)                # lazy: the model loads in the first call
    serve(solve, config)                         # whichever API is present, else our gateway

- AIMO 1 (`aimo` module, in the competition's rerun): make_env() / iter_test() / predict().
- AIMO 2 and 3 (`kaggle_evaluation`): an inference server around the module-level `predict`
  below, called from a gRPC worker thread; in a rerun `serve()`, else the local gateway of
  `kaggle_evaluation` over the competition's test.csv.
- Anywhere else: `aimo_lib.gateway.LocalGateway` over a problem file (default: the sample
  problems shipped with aimo_lib), with a score when answers are known.

Every path answers through `aimo_lib.guard`: a solve that fails, for any reason, submits the
fallback answer (its traceback goes to results.jsonl and the log) and the run goes on; a dead
engine gets the remaining problems answered at once rather than each waiting out its budget.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from .competitions import get_competition
from .gateway import LocalGateway, Report, append_jsonl, load_problems, read_rows
from .guard import EngineHealth, GuardedSolve, log, probe

__all__ = ["NotebookConfig", "is_rerun", "make_solve_fn", "predict", "serve"]

KAGGLE_INPUT = "/kaggle/input"


def is_rerun() -> bool:
    """True inside Kaggle's scoring rerun of a competition notebook."""
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


@dataclass
class NotebookConfig:
    """Everything the notebook can set; each field also reads AIMO_<FIELD> from the env."""

    competition: str = "aimo1"  # aimo1 | aimo2 | aimo3
    model: str | None = "auto"  # a model dir; "auto": one attached on Kaggle, else SmolLM2
    engine: str = "auto"  # auto (vllm where importable, GPU or CPU; else hf) | vllm | hf | openai
    openai_url: str | None = None  # for engine=openai
    # "auto": from the model (embedded_cpu for the embedded SmolLM2, aimo3_gpt_oss for gpt-oss,
    # else default); or a name in aimo_lib.solver.PRESETS
    preset: str = "auto"
    num_samples: int | None = None  # None: the preset's
    max_rounds: int | None = None
    max_new_tokens: int | None = None
    prompt_template: str | None = None
    temperature: float | None = None
    total_hours: float | None = None  # None: the competition's (9 h AIMO 1, 5 h AIMO 2/3)
    problems: str = "auto"  # off Kaggle's rerun: a .jsonl/.csv path, "samples" or "auto"
    limit: int | None = None  # serve only the first N problems (local runs)
    out_dir: str = "submission"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model == "auto":
            self.model = _attached_model()

    @classmethod
    def from_env(cls, **overrides) -> NotebookConfig:
        """Defaults, then AIMO_* environment variables, then non-None `overrides`."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"AIMO_{f.name.upper()}")
            if raw not in (None, ""):
                kind = str(f.type).replace(" | None", "")
                values[f.name] = (int(raw) if kind == "int" else float(raw) if kind == "float"
                                  else raw)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown NotebookConfig fields: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def solver_config(self):
        from .solver import config_for_run

        return config_for_run(
            self.preset, self.model, served=self.engine == "openai",
            competition=self.competition, seed=self.seed, num_samples=self.num_samples,
            max_rounds=self.max_rounds, max_new_tokens=self.max_new_tokens,
            temperature=self.temperature, prompt_template=self.prompt_template)

    def engine_spec(self):
        from .engines import EngineSpec

        return EngineSpec(self.engine, self.model, (self.openai_url,) if self.openai_url else ())


def _attached_model() -> str | None:
    """A model attached to a Kaggle notebook: /kaggle/input/<model>/<framework>/<variation>/<n>
    with a config.json; None elsewhere (the embedded SmolLM2 is used)."""
    import glob

    found = sorted(glob.glob(os.path.join(KAGGLE_INPUT, "*", "*", "*", "*", "config.json")))
    return os.path.dirname(found[0]) if found else None


class SolveFn:
    """solve(problem, problem_id) -> SolveResult, as make_solve_fn builds it.

    Nothing heavy happens until the first call (so an AIMO 2/3 server starts within Kaggle's
    15 minutes); each call gets its deadline from the run's TimeBudget (`expect(n)` sizes it
    for the problems actually served); results are appended to <out_dir>/results.jsonl.
    Never raises: an engine that cannot be built, or that has died, gives the flagged
    fallback (and the records say why).
    """

    def __init__(self, config: NotebookConfig, engine=None, probe_timeout_s: float = 30.0):
        from .budget import TimeBudget

        self.config, self.probe_timeout_s = config, probe_timeout_s
        self.budget = TimeBudget.for_run(config.competition, config.total_hours)
        self.health = EngineHealth()
        self._engine = engine  # an engine, a callable building one, or None: from config
        self._solver = None
        self._lock = threading.Lock()
        self.results_path = os.path.join(config.out_dir, "results.jsonl")
        os.makedirs(config.out_dir, exist_ok=True)
        with open(os.path.join(config.out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump({"notebook": asdict(config), "solver": config.solver_config().to_dict()},
                      f, indent=2, default=str)

    def expect(self, n_problems: int) -> None:
        """The run serves `n_problems` in all: size the per-problem budget for them."""
        self.budget.resize(n_problems)

    def __call__(self, problem: str, problem_id: str = ""):
        from .solver import SolveResult

        with self._lock:  # one problem at a time, as the gateways serve them
            limit = self.budget.next_limit_s()
            start = time.monotonic()
            result = error = None
            if self.health.dead:
                error = f"not attempted: the engine is dead ({self.health.reason.strip()})"
            else:
                try:
                    result = self._get_solver().solve(problem, time_limit_s=limit)
                except Exception:  # building the engine failed (solve() itself never raises)
                    error = traceback.format_exc()
            if result is None:
                rules = self.config.solver_config().rules
                result = SolveResult(problem, rules.fallback, {}, True, False, [], 0,
                                     time.monotonic() - start, self.config.preset, error=error)
                log(f"{problem_id}: no solver; fallback {result.answer}:\n{error}")
            failed = result.engine_failed or not result.samples
            why = error or _first_error(result)
            if not failed and result.nothing_back and self._solver is not None:
                why = probe(self._solver.engine, self.probe_timeout_s)  # hung, or just slow?
                failed = why is not None
            self.health.record(failed, why or "")
            self.budget.record(result.elapsed_s)
            append_jsonl(self.results_path, {"id": problem_id, **result.to_dict()})
            log(f"{problem_id}: answer {result.answer} votes {dict(result.votes)} in "
                f"{result.elapsed_s:.1f} s (limit {limit:.0f} s); {self.budget}")
            return result

    def _get_solver(self):
        if self._solver is None:
            from .sandbox import Sandbox
            from .solver import Solver

            start = time.monotonic()
            engine = self._engine
            if engine is None:
                engine = self.config.engine_spec().build()
            elif not hasattr(engine, "generate") and callable(engine):
                engine = engine()
            self._solver = Solver(engine, Sandbox(), self.config.solver_config())
            log(f"model and sandbox ready in {time.monotonic() - start:.0f} s")
        return self._solver

    def close(self) -> None:
        """Shut the engine and the sandbox down."""
        if self._solver is not None:
            self._solver.engine.close()
            self._solver.sandbox.close()
            self._solver = None


def _first_error(result) -> str:
    return next((s.error for s in result.samples if s.error), "") or (result.error or "")


def make_solve_fn(config: NotebookConfig, engine=None, **kwargs) -> SolveFn:
    """The notebook's solve(problem, problem_id) -> SolveResult; see SolveFn. `engine`: an
    engine or a function building one (default: from the config, at the first call)."""
    return SolveFn(config, engine, **kwargs)


# ---------------------------------------------------------------- AIMO 2 / 3

_solve: GuardedSolve | None = None


def _scalar(column):
    """The single value of a one-row polars/pandas Series (or a plain value)."""
    return column.to_list()[0] if hasattr(column, "to_list") else column


def predict(id_, problem, *rest):
    """The AIMO 2/3 inference servers' callback: a plain module-level function named `predict`
    (they reject lambdas, partials and bound methods). One polars Series per CSV column.
    Never raises: an exception here would stop Kaggle's gateway and lose the submission."""
    import polars as pl

    if _solve is None:
        raise RuntimeError("aimo_lib.kaggle.serve() must be called before predict()")
    try:
        problem_id, text = str(_scalar(id_)), str(_scalar(problem))
    except Exception:  # noqa: BLE001 - malformed input: still answer the row
        problem_id, text = str(id_), str(problem)
    answer = _solve(text, problem_id).answer
    return pl.DataFrame({"id": [problem_id], "answer": [answer]})


def _default_problems(competition: str) -> str:
    kaggle_dir = os.path.join(KAGGLE_INPUT, get_competition(competition).kaggle_dir)
    for name in ("test.csv", "train.csv", "reference.csv"):
        path = os.path.join(kaggle_dir, name)
        if os.path.exists(path):
            return path
    return "samples"


def serve(solve: Callable[[str, str], object], config: NotebookConfig) -> Report | None:
    """Drive whichever evaluation API is present for `config.competition`.

    Returns the local gateway's Report when our gateway ran (off Kaggle), else None.
    """
    global _solve
    competition = config.competition
    server_class = get_competition(competition).server
    guarded = GuardedSolve(solve, competition,
                           os.path.join(config.out_dir, "results.jsonl"))
    expect = getattr(solve, "expect", None)
    if competition == "aimo1" and is_rerun():
        import aimo  # shipped with the AIMO 1 competition data

        env = aimo.make_env()
        for test, sample_submission in env.iter_test():
            try:
                problem_id, text = str(test["id"].values[0]), str(test["problem"].values[0])
            except Exception:  # noqa: BLE001 - malformed input: still answer the row
                problem_id, text = "?", str(test)
            sample_submission["answer"] = guarded(text, problem_id).answer
            env.predict(sample_submission)
        return None
    if server_class and importlib.util.find_spec("kaggle_evaluation") is not None:
        module, name = server_class
        _solve = guarded
        server = getattr(importlib.import_module(module), name)(predict)
        if is_rerun():
            server.serve()
        else:
            path = _problems_path(config)
            if callable(expect) and path.endswith((".csv", ".jsonl")) and os.path.exists(path):
                expect(len(read_rows(path)))
            server.run_local_gateway((path,))
        return None
    if is_rerun():
        raise RuntimeError(f"a {competition} rerun without its evaluation API: attach the "
                           "competition's data to the notebook")
    gateway = LocalGateway(load_problems(_problems_path(config), config.limit), competition,
                           seed=config.seed, out_dir=config.out_dir)
    if callable(expect):
        expect(len(gateway.problems))
    report = gateway.run(guarded)
    print(report.table(), flush=True)
    return report


def _problems_path(config: NotebookConfig) -> str:
    return _default_problems(config.competition) if config.problems == "auto" else (
        config.problems)
