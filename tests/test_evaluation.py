import importlib.util
import json
import os
import subprocess
import sys

import pytest

from aimo_lib import Solver, SolverConfig
from aimo_lib.config import RunConfig
from aimo_lib.engines import ScriptedEngine
from aimo_lib.evaluation import (
    DATASETS,
    compare_runs,
    eval_runner,
    load_eval_dataset,
    load_records,
    maj_at_k,
    run_eval,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The validation sets' JSONL copies (docs/reference.md section 8): $AIMO_DATA_DIR, else the
# shared/data folder beside the checkout where the project's machines keep them.
SHARED = os.environ.get("AIMO_DATA_DIR") or os.path.join(REPO, "..", "shared", "data")
NO_SETS = "no validation sets: set AIMO_DATA_DIR to a folder of their JSONL copies"

# Problem -> what each of its 4 samples boxes (None: no answer). Truths: A=7, B=8, C=9.
SCRIPT = {"A": [7, 7, 3, None], "B": [1, 2, 8, 1], "C": [5, 5, 5, 5]}


def write_set(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture
def canned(tmp_path):
    path = write_set(tmp_path / "set.jsonl", [
        {"id": "A", "problem": "Problem A", "answer": "7"},
        {"id": "B", "problem": "Problem B", "answer": "8"},
        {"id": "C", "problem": "Problem C", "answer": "009"}])
    problems, skipped = load_eval_dataset(path)
    assert skipped == [] and [p.answer for p in problems] == [7, 8, 9]
    return problems


CFG = SolverConfig.preset("default", num_samples=4, max_rounds=1, early_stop=None,
                         stop_at_boxed=False, pipeline="rounds", prompt_template="{problem}")


def scripted_engine(script=SCRIPT) -> ScriptedEngine:
    def fn(prompt, k):
        name = prompt.split("Problem ")[1][0]
        a = script[name][k % 4]
        return "no idea" if a is None else f"\\boxed{{{a}}}"

    return ScriptedEngine(fn)


def scripted_runner(out, sandbox, script=SCRIPT):
    """The evaluation's run loop on a scripted engine (real solver, real records)."""
    return eval_runner(RunConfig(competition="aimo1"), str(out), engine=scripted_engine(script),
                       sandbox=sandbox, solver=CFG)


def test_exact_metrics_on_canned_data(canned, sandbox, tmp_path):
    out = tmp_path / "run"
    summary = run_eval(canned, scripted_runner(out, sandbox), [0, 1], str(out),
                       {"dataset": "canned"}, progress=False)
    assert summary["maj_at_n"] == {"mean": pytest.approx(1 / 3), "std": 0.0,
                                   "per_seed": [pytest.approx(1 / 3)] * 2}
    assert summary["pass_at_n"]["mean"] == pytest.approx(2 / 3)
    # maj@1: the mean fraction of correct samples; maj@2 enumerated by hand over 6 pairs each:
    # A {7,7,3,-}: 5/6, B {1,2,8,1}: 1/6 (only {8, 1} with 8 first), C: 0.
    assert summary["maj_at_k"]["1"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert summary["maj_at_k"]["2"] == pytest.approx((5 / 6 + 1 / 6 + 0) / 3)
    assert summary["maj_at_k"]["4"] == pytest.approx(1 / 3)
    rows = {r["id"]: r for r in summary["per_problem"]}
    assert rows["A"]["correct"] == 1 and rows["B"]["answers"] == [1, 1]
    assert rows["A"]["votes"] == {"7": 4.0, "3": 2.0} and rows["A"]["margin"] == pytest.approx(
        2 / 6)
    assert rows["C"]["margin"] == 1.0
    plots = ("accuracy_vs_k.png", "vote_margin.png", "time_per_problem.png")
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    for name in ("config.json", "samples.jsonl", "summary.json", "report.md") + (
            plots if has_matplotlib else ()):
        assert (out / name).exists(), name
    assert len(load_records(str(out))) == 6
    assert "maj@4: 33.3% ± 0.0%" in (out / "report.md").read_text()


def test_maj_at_k_estimator():
    answers = [1] * 30 + [2] * 18
    assert maj_at_k(answers, 1, 48) == 1.0
    assert maj_at_k(answers, 1, 1) == pytest.approx(30 / 48, abs=0.06)  # sampled (C(48,1)=48)
    exact = maj_at_k([1, 2, 2], 2, 2)
    assert exact == pytest.approx(1 / 3)  # subsets {1,2}: 1 first x2 -> wrong... {2,2} right
    with pytest.raises(ValueError):
        maj_at_k([1, 2], 1, 3)


def recording(out, sandbox, calls: list, fail_at: int | None = None):
    """An evaluation runner that records each problem solved (and can die at one)."""
    solver = Solver(scripted_engine(), sandbox, CFG)

    def solve(problem, problem_id, limit):
        calls.append(problem)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # the run is killed during this problem
        return solver.solve(problem)

    return eval_runner(RunConfig(competition="aimo1"), out, solve_fn=solve)


def test_resume_after_an_interruption(canned, sandbox, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run_eval(canned, recording(out, sandbox, [], fail_at=3), [0, 1], out,
                 {"dataset": "canned"}, progress=False)
    kept = len(load_records(out))
    assert kept == 2  # the two before the crash: nothing after it started
    with open(os.path.join(out, "samples.jsonl"), "a") as f:
        f.write('{"id": "C", "se')  # a torn last line is ignored
    redo = []
    summary = run_eval(canned, recording(out, sandbox, redo), [0, 1], out,
                       {"dataset": "canned"}, progress=False)
    assert len(redo) == 6 - kept and len(load_records(out)) == 6
    assert summary["maj_at_n"]["mean"] == pytest.approx(1 / 3)
    again = []
    run_eval(canned, recording(out, sandbox, again), [0, 1, 2], out, {"dataset": "canned"},
             progress=False)
    assert len(again) == 3  # only seed 2 was new


def test_compare_runs_with_paired_bootstrap(canned, sandbox, tmp_path):
    better = {**SCRIPT, "C": [9, 9, 5, 5]}
    for name, script in (("a", SCRIPT), ("b", better)):
        out = tmp_path / name
        run_eval(canned, scripted_runner(out, sandbox, script), [0], str(out),
                 {"dataset": "set"}, progress=False)
    (row,) = compare_runs(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (row["dataset"], row["problems"]) == ("set", 3)
    assert row["a"] == pytest.approx(1 / 3) and row["b"] == pytest.approx(2 / 3)
    assert row["delta"] == pytest.approx(1 / 3) and row["ci95"] == (0.0, 1.0)
    (same,) = compare_runs(str(tmp_path / "a"), str(tmp_path / "a"))
    assert same["delta"] == 0 and same["ci95"] == (0.0, 0.0)
    # A folder of runs compares per set.
    os.makedirs(tmp_path / "all")
    os.rename(tmp_path / "b", tmp_path / "all" / "b")
    assert compare_runs(str(tmp_path / "a"), str(tmp_path / "all"))[0]["delta"] > 0
    with pytest.raises(FileNotFoundError):
        compare_runs(str(tmp_path / "a"), str(tmp_path / "nothing"))


def test_bad_datasets(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'amc23'"):
        load_eval_dataset("amc23")
    with pytest.raises(ValueError, match="row 2 needs 'problem' and 'answer'"):
        load_eval_dataset(write_set(tmp_path / "x.jsonl", [{"problem": "p", "answer": 1},
                                                           {"problem": "q"}]))
    problems, skipped = load_eval_dataset(write_set(tmp_path / "y.jsonl", [
        {"id": "ok", "problem": "p", "answer": "12"},
        {"id": "frac", "problem": "q", "answer": "\\frac{1}{2}"}]))
    assert [p.id for p in problems] == ["ok"] and skipped == [
        "frac: answer '\\\\frac{1}{2}' is not an integer"]
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_eval_dataset("aimo1", data_dir=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=NO_SETS)
def test_the_shared_validation_sets_load():
    sizes = {"aime": 90, "amc": 83, "math4": 744, "math5": 719, "aimo1": 10}
    for name in DATASETS:
        problems, skipped = load_eval_dataset(name, data_dir=SHARED)
        assert len(problems) == sizes[name] and skipped == [], name
    aime, _ = load_eval_dataset("aime", data_dir=SHARED)
    assert any(p.answer < 100 for p in aime)  # "033" compared as an integer


def test_cli_errors_are_clear():
    r = subprocess.run([sys.executable, "-m", "aimo_lib.cli", "eval", "--dataset", "nope"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown dataset 'nope'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "aimo_lib.cli"], capture_output=True, text=True)
    assert r.returncode == 2 and "aimo eval" in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)  # its subprocess may take 600 s on a busy machine
@pytest.mark.skipif(not os.path.isdir(SHARED), reason=NO_SETS)
def test_aimo_eval_end_to_end_with_smollm2(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aimo_lib.cli", "eval", "--dataset", "aimo1", "--data-dir",
           SHARED, "--limit", "2", "--seeds", "1", "--num-samples", "2", "--max-rounds", "2",
           "--max-new-tokens", "48", "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "aimo1: maj@2" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 2 and summary["num_samples"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["solver"]["num_samples"] == 2 and config["seeds"] == [0]


def early_stopped_record(pid: str, seed: int, statuses_answers, answer: int) -> dict:
    samples = [{"answer": a, "status": st, "code_calls": []} for st, a in statuses_answers]
    return {"id": pid, "seed": seed, "result": {
        "answer": answer, "fallback": False, "votes": {str(answer): 4.0}, "samples": samples,
        "tokens_generated": 100, "elapsed_s": 1.0, "stopped_early": True}}


def test_maj_at_k_leaves_out_samples_cancelled_by_early_stop():
    # 4 samples agreed on the truth, 4 were cancelled by early stop (no answer): the old
    # metric called the cancelled ones wrong, so maj@1 read 50% for a run that was right.
    from aimo_lib.evaluation import EvalProblem, summarize

    rec = early_stopped_record("A", 0, [("answered", 7)] * 4 + [("cancelled", None)] * 4, 7)
    summary = summarize([rec], [EvalProblem("A", "p", 7)], "aimo1")
    assert summary["maj_at_k"]["1"] == 1.0 and summary["maj_at_k"]["4"] == 1.0
    assert summary["maj_at_k"]["8"] == 1.0  # fewer than 8 finished: the solve's own answer
    assert summary["finished_samples_per_problem"] == 4
    # a sample that timed out did not finish by the run's own fault: it still counts
    rec = early_stopped_record("A", 0, [("answered", 7)] * 2 + [("timeout", None)] * 2, 7)
    assert summarize([rec], [EvalProblem("A", "p", 7)], "aimo1")["maj_at_k"]["1"] == 0.5


def test_maj_at_k_per_seed_and_the_plot_axes(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from aimo_lib.evaluation import EvalProblem, _k_axis, summarize, write_plots

    recs = [early_stopped_record("A", s, [("answered", 7)] * 6 + [("answered", 3)] * (2 + s),
                                 7) for s in (0, 1)]
    summary = summarize(recs, [EvalProblem("A", "p", 7)], "aimo1")
    assert summary["maj_at_k_per_seed"]["1"] == [pytest.approx(6 / 8), pytest.approx(6 / 9)]
    fig, ax = plt.subplots()
    ax.plot([1, 2, 4, 8], [10, 20, 30, 40])
    _k_axis(ax, [1, 2, 4, 8])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]
    plt.close(fig)
    (tmp_path / "config.json").write_text(json.dumps({"model": "/x/toy-tir-n120-s42"}))
    summary["dataset"] = "toy"
    paths = write_plots(summary, recs, str(tmp_path))
    assert len(paths) == 3 and all(os.path.getsize(p) > 0 for p in paths)
