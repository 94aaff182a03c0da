"""From this repository to a scored Kaggle submission: the kernel folder for a competition runs
as that competition in the scoring rerun, the competition and the model are found in what is
attached, the install cell says what to attach, the wheelhouse resolves for the image, and the
dress rehearsal runs a folder as the rerun does, offline, the gateway in its own process."""

import csv
import importlib
import json
import os
import subprocess
import sys
import threading

import pytest

from aimo_lib.config import RunConfig
from aimo_lib.kaggle import serve as kg
from aimo_lib.kaggle.wheelhouse import IMAGE_PROVIDES, Target, WheelhouseError, check_runtime
from aimo_lib.resolve import NoModelAttached

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDINS = os.path.join(REPO, "aimo_lib", "kaggle", "standins")
AIMO3_DIR = "ai-mathematical-olympiad-progress-prize-3"


def _forget_apis() -> None:
    for name in [m for m in sys.modules if m == "aimo" or m.startswith("kaggle_evaluation")]:
        for server in getattr(sys.modules[name], "servers", []):
            server.stop(0)
        del sys.modules[name]


@pytest.fixture
def kaggle_input(tmp_path, monkeypatch):
    """An empty Kaggle-like input folder (aimo_lib reads it through $AIMO_KAGGLE_INPUT)."""
    root = tmp_path / "input"
    root.mkdir()
    monkeypatch.setenv("AIMO_KAGGLE_INPUT", str(root))
    monkeypatch.chdir(tmp_path)
    _forget_apis()
    yield root
    _forget_apis()
    sys.path[:] = [p for p in sys.path if not p.startswith(str(root))]


def attach_competition(root, name_dir=AIMO3_DIR, rows=3):
    """The competition's data: its API (the stand-in) and a test.csv."""
    folder = root / name_dir
    folder.mkdir()
    import shutil

    shutil.copytree(os.path.join(STANDINS, "kaggle_evaluation"), folder / "kaggle_evaluation")
    with open(folder / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "problem"])
        w.writerows([(f"q{i}", f"What is {i} + {i}?") for i in range(rows)])
    return folder


def fake_checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"")
    return folder


# ---------------------------------------------------------------- found, not assumed


def test_the_competition_is_found_from_what_is_attached(kaggle_input, monkeypatch):
    monkeypatch.setattr(kg, "_api_present", lambda name: False)  # none importable here
    assert kg.find_competition() is None
    assert kg.kaggle_resolve(RunConfig.load(env={}, values={"model": "x"})).competition == "aimo1"
    (kaggle_input / "ai-mathematical-olympiad-progress-prize-2").mkdir()
    assert kg.find_competition() == "aimo2"
    (kaggle_input / AIMO3_DIR).mkdir()
    assert kg.find_competition() == "aimo3"  # the newest attached
    assert kg.kaggle_resolve(RunConfig.load(env={}, values={"model": "x"})).competition == "aimo3"
    assert kg.kaggle_resolve(RunConfig.load(env={}, values={"competition": "aimo2", "model": "x"})
                      ).competition == "aimo2"  # said explicitly: kept


@pytest.mark.parametrize("layout", ["models", "dataset", "dataset-flat", "dataset-nested"])
def test_a_model_is_found_in_either_layout(kaggle_input, layout):
    (kaggle_input / "aimo-lib-wheels").mkdir()
    (kaggle_input / "aimo-lib-wheels" / "aimo_lib-0.1.0-py3-none-any.whl").write_bytes(b"")
    attach_competition(kaggle_input)
    where = {"models": "gpt-oss-120b/transformers/default/1", "dataset": "my-model/checkpoint",
             "dataset-flat": "my-model", "dataset-nested": "my-model/runs/stage2/final"}[layout]
    fake_checkpoint(kaggle_input / where)
    assert kg.find_model() == str(kaggle_input / where)
    config = kg.kaggle_resolve(RunConfig.load(env={}))
    assert config.model == str(kaggle_input / where) and config.competition == "aimo3"


def test_with_no_model_attached_an_interactive_run_stops_and_says_what_to_attach(kaggle_input):
    (kaggle_input / "aimo-lib-wheels").mkdir()
    with pytest.raises(NoModelAttached, match="attach your model to the notebook"):
        kg.kaggle_resolve(RunConfig.load(env={}))


def test_with_no_model_attached_a_rerun_answers_every_problem_with_the_reason(
        kaggle_input, monkeypatch, capsys):
    """Never a pip hint that cannot work offline: the fallback at once, and why."""
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setenv("KAGGLE_STANDIN_HOST", "localhost")
    comp = attach_competition(kaggle_input)
    monkeypatch.syspath_prepend(str(comp))  # the gateway's own copy (serve finds it itself)
    config = kg.kaggle_resolve(RunConfig.load(env={}, values={"out_dir": str(kaggle_input.parent /
                                                                      "out")}))
    runner = kg.make_runner(config)
    threading.Thread(target=kg.serve, args=(runner,), daemon=True).start()
    importlib.import_module("kaggle_evaluation.aimo_3_gateway").AIMO3Gateway(
        (str(comp / "test.csv"),)).run()
    err = capsys.readouterr().err
    assert "no model found" in err and "pip install" not in err
    rows = [json.loads(line) for line in open(kaggle_input.parent / "out" / "results.jsonl")]
    assert len(rows) == 3 and all("no model is attached" in r["error"] for r in rows)


def test_the_kernel_folder_for_aimo3_runs_as_aimo3_in_a_rerun(kaggle_input, tmp_path,
                                                             monkeypatch):
    """The folder `kernel-metadata --competition aimo3` writes: its notebook, run as the rerun
    runs it (here in-process, the gateway reaching its server over gRPC), serves AIMO 3 even
    with another competition's API importable (the bug: it served aimo1 and died on
    `import aimo`)."""
    from aimo_lib.kaggle.cli import main

    main(["kernel-metadata", "--competition", "aimo3", "--out", str(tmp_path / "k")])
    comp = attach_competition(kaggle_input)
    monkeypatch.syspath_prepend(str(comp))  # the gateway's own copy (serve finds it itself)
    fake_checkpoint(kaggle_input / "model" / "ckpt")
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setenv("KAGGLE_STANDIN_HOST", "localhost")
    monkeypatch.setenv("AIMO_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.syspath_prepend(STANDINS)  # AIMO 1's `aimo` importable too
    from aimo_lib.engines import EngineSpec, ScriptedEngine

    monkeypatch.setattr(EngineSpec, "build", lambda spec: ScriptedEngine(
        lambda p, k: "\\boxed{12345}"))
    nb = json.loads((tmp_path / "k" / "kaggle_notebook.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    for cell in code[:-1]:  # install (skipped: aimo_lib is here), settings, configuration
        exec(compile(cell, "notebook", "exec"), namespace)
    assert namespace["config"].competition == "aimo3"
    assert namespace["config"].model == str(kaggle_input / "model" / "ckpt")
    threading.Thread(target=exec, args=(compile(code[-1], "notebook", "exec"), namespace),
                     daemon=True).start()  # serve(): blocks, as in the rerun
    importlib.import_module("kaggle_evaluation.aimo_3_gateway").AIMO3Gateway(
        (str(comp / "test.csv"),)).run()
    import polars as pl

    sub = pl.read_parquet("submission.parquet")
    assert sorted(sub["id"].to_list()) == ["q0", "q1", "q2"]
    assert sub["answer"].to_list() == [12345] * 3  # > 999: AIMO 3's rules, no modulus


def test_a_rerun_serves_the_api_that_is_present_loudly(kaggle_input, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setenv("KAGGLE_STANDIN_HOST", "localhost")
    comp = attach_competition(kaggle_input)
    monkeypatch.syspath_prepend(str(comp))  # the gateway's own copy (serve finds it itself)
    runner = kg.make_runner(kg.kaggle_resolve(RunConfig.load(env={}, values={
        "competition": "aimo1", "model": "none", "out_dir": str(kaggle_input.parent / "o")})),
        solve_fn=lambda p, i, limit: 54321)
    threading.Thread(target=kg.serve, args=(runner,), daemon=True).start()
    importlib.import_module("kaggle_evaluation.aimo_3_gateway").AIMO3Gateway(
        (str(comp / "test.csv"),)).run()
    assert "COMPETITION is aimo1, but its evaluation API is not attached" in (
        capsys.readouterr().err)
    import polars as pl

    assert pl.read_parquet("submission.parquet")["answer"].to_list() == [54321] * 3


def test_the_install_cell_names_the_folder_and_what_to_attach(tmp_path):
    nb = json.load(open(os.path.join(REPO, "kaggle_notebook.ipynb")))
    install = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    (tmp_path / "input" / "some-other-dataset").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-S", "-c", install],  # -S: no aimo_lib
                            env={"AIMO_KAGGLE_INPUT": str(tmp_path / "input")}, cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f"no aimo_lib-*.whl in {tmp_path / 'input'}/<dataset>/" in result.stderr
    assert "Attach the dataset that `aimo-kaggle wheelhouse` built" in result.stderr


# ---------------------------------------------------------------- the wheelhouse


def test_the_wheelhouse_accepts_every_manylinux_tag_up_to_the_images_glibc():
    tags = Target(python="3.12", glibc="2.35").platform_tags()
    for minor in (5, 17, 18, 27, 28, 31, 35):  # vLLM's tree needs _2_18, _2_27 and _2_31
        assert f"manylinux_2_{minor}_x86_64" in tags
    assert "manylinux_2_36_x86_64" not in tags  # newer than the image: would not load
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux2014_x86_64" not in Target(glibc="2.12").platform_tags()
    with pytest.raises(WheelhouseError, match="major.minor"):
        Target(python="3")


def test_the_wheelhouse_is_resolved_for_the_target_not_for_this_interpreter(tmp_path,
                                                                             monkeypatch):
    """pip reads environment markers for the interpreter it runs on (a 3.12 wheelhouse built
    from 3.11 lacked `six`): the target's set is resolved by uv for that Python and glibc, and
    pip only downloads the pinned files, for every tag the image loads."""
    from aimo_lib.kaggle import wheelhouse

    commands = []

    def fake_run(cmd, what):
        commands.append(cmd)
        if "compile" in cmd:
            open(cmd[cmd.index("-o") + 1], "w").write("six==1.17.0\nvllm==0.33.0\n"
                                                      "torch==2.14.0\ntransformers==5.20.2\n")

    monkeypatch.setattr(wheelhouse, "_run", fake_run)
    monkeypatch.setattr(wheelhouse, "_aimo_lib_wheel", lambda out, source: None)
    built = wheelhouse.build(str(tmp_path), "me/w", target=Target(python="3.12", glibc="2.35"))
    compile_, download = commands
    assert compile_[compile_.index("--python-version") + 1] == "3.12"
    assert compile_[compile_.index("--python-platform") + 1] == "x86_64-manylinux_2_35"
    assert download[download.index("--python-version") + 1] == "3.12"
    assert "--no-deps" in download and "--only-binary=:all:" in download
    assert download.count("--platform") == len(Target(glibc="2.35").platform_tags())
    assert "six==1.17.0" in built.lock
    lock = (tmp_path / "requirements.lock").read_text()
    assert lock.startswith("# resolved for Python 3.12, glibc 2.35") and "six==1.17.0" in lock


def test_every_module_the_notebook_imports_is_in_the_wheelhouse_or_the_image():
    lock = ["vllm==0.33.0", "torch==2.14.0", "transformers==5.20.2"]
    check_runtime(lock)  # with the image's own packages, nothing is missing
    with pytest.raises(WheelhouseError, match=r"transformers \(distribution transformers; "
                       r"imported by aimo_lib/"):
        check_runtime(["vllm==0.33.0", "torch==2.14.0"])
    assert {"numpy", "sympy", "polars", "grpcio"} <= set(IMAGE_PROVIDES)


@pytest.mark.slow
def test_aimo_kaggle_works_from_an_installed_wheel(tmp_path):
    """Installed (not editable), aimo-kaggle writes kernel folders and wheelhouses: the
    notebook and the metadata ship as package data, and its own wheel is packed again."""
    wheels = tmp_path / "w"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), REPO], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", *map(str, wheels.glob("aimo_lib-*.whl"))], check=True)
    run = lambda *args: subprocess.run([py, "-m", "aimo_lib.kaggle.cli", *args],
                                       cwd=tmp_path, capture_output=True, text=True)
    where = subprocess.run([py, "-c", "import aimo_lib; print(aimo_lib.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True).stdout
    assert str(venv) in where  # the installed copy, not the checkout
    r = run("kernel-metadata", "--competition", "aimo3", "--user", "me", "--out", "k")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k" / "kaggle_notebook.ipynb").exists()
    r = run("wheelhouse", "--dataset", "me/w", "--out", "wh", "--no-download")
    assert r.returncode == 0, r.stderr
    assert {"requirements.txt", "dataset-metadata.json"} <= set(os.listdir(tmp_path / "wh"))
    (whl,) = (tmp_path / "wh").glob("aimo_lib-*.whl")
    import zipfile

    names = zipfile.ZipFile(whl).namelist()
    assert "aimo_lib/data/kaggle_notebook.ipynb" in names and "aimo_lib/kaggle/serve.py" in names


# ---------------------------------------------------------------- the dress rehearsal


@pytest.fixture(scope="session")
def cpu_wheelhouse(tmp_path_factory):
    """A CPU wheelhouse of the pins CI installs (runtime wheels downloaded once per machine and
    cached), with this checkout's aimo_lib wheel built fresh."""
    import hashlib
    import shutil

    from aimo_lib.kaggle.wheelhouse import NATIVE, build, packaged
    from aimo_lib.models import cache_dir

    pins = open(packaged("requirements-cpu.txt"), "rb").read()
    cached = os.path.join(cache_dir(), "wheelhouse", "cpu-py" + NATIVE.python + "-" +
                          hashlib.sha256(pins).hexdigest()[:12])
    if not os.path.exists(os.path.join(cached, "requirements.lock")):
        build(cached + ".tmp", "me/aimo-lib-wheels", target=NATIVE,
              requirements=packaged("requirements-cpu.txt"), without=("vllm",))
        for whl in os.listdir(cached + ".tmp"):
            if whl.startswith("aimo_lib-"):
                os.remove(os.path.join(cached + ".tmp", whl))
        shutil.rmtree(cached, ignore_errors=True)
        os.rename(cached + ".tmp", cached)
    out = tmp_path_factory.mktemp("wheels")
    for name in os.listdir(cached):
        os.link(os.path.join(cached, name), out / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), REPO], check=True)
    image = os.path.join(cache_dir(), "wheelhouse", "image-py" + NATIVE.python)
    from aimo_lib.kaggle.rehearsal import prepare_image_wheels

    return str(out), prepare_image_wheels(image)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the rehearsal may take 900 s, the wheelhouse set-up more
@pytest.mark.parametrize("competition", ["aimo2", "aimo3"])
def test_a_rehearsal_on_cpu_gives_a_complete_submission(cpu_wheelhouse, tmp_path, competition):
    """The whole journey, offline: the folder kernel-metadata writes, a fresh venv with only
    the image's packages, the notebook installing aimo_lib and torch from the wheels with the
    network cut, Kaggle's gateway (the stand-in) in a process of its own over gRPC, the
    embedded model attached as a Dataset."""
    wheels, image = cpu_wheelhouse
    from aimo_lib.kaggle.cli import main
    from aimo_lib.kaggle.rehearsal import Rehearsal

    main(["kernel-metadata", "--competition", competition, "--user", "me",
          "--out", str(tmp_path / "k")])
    from aimo_lib.models import embedded_checkpoint

    settings = {"NUM_SAMPLES": "1", "MAX_ROUNDS": "1", "MAX_NEW_TOKENS": "16"}
    report = Rehearsal(str(tmp_path / "k"), wheels, str(tmp_path / "work"),
                       embedded_checkpoint(), limit=2, settings=settings,
                       image_wheels=image, timeout_s=900).run()
    log = open(report.log).read()[-3000:] if os.path.exists(report.log) else ""
    # 16 tokens a sample may give no answer: an id is then the fallback, with its cause (a
    # fallback is never counted as the model's), and that is the only problem allowed here
    fallbacks = [p for p in report.problems if "answers are the fallback" in p]
    assert report.problems == fallbacks, report.table() + "\n" + log
    assert report.network_cut and report.ids == report.answered == 2
    assert report.by_model + sum(report.fallbacks.values()) == 2
    assert report.startup_s is not None and report.startup_s < 900
    assert "installing aimo_lib offline" in log
    assert "no module named" not in log.lower()
