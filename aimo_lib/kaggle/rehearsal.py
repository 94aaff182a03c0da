"""The dress rehearsal: a kernel folder run as Kaggle's scoring rerun runs it, offline, before a
submission is spent (`aimo-kaggle rehearse --dir build/aimo3 --wheels build/wheels`).

1. A Kaggle-like input folder: the wheels dataset under its slug, the model (a Kaggle Model
   at <model>/<framework>/<variation>/<version>, or a Dataset folder), the competition's data
   with its evaluation API (the data you downloaded, or aimo_lib's stand-ins with a test.csv).
   aimo_lib reads it through $AIMO_KAGGLE_INPUT instead of /kaggle/input.
2. A fresh venv of the target Python with only what the Kaggle image provides
   (wheelhouse.image_names: IMAGE_PROVIDES, the names added with `image_provides`, and what
   the image wheel folder's image.txt and wheels name, installed from that folder).
3. With the network cut (a new network namespace, loopback only: `unshare -n`): the folder's
   notebook, unchanged, its code cells in order in one interpreter, with
   KAGGLE_IS_COMPETITION_RERUN set (its install cell installs aimo_lib and the runtime from
   the wheels, offline); for AIMO 2/3 the gateway in a process of its own reaching the
   notebook's server over gRPC, as Kaggle's does, writing submission.parquet.
4. The report: every id answered, answers in range, how many by the model (a sample gave
   the answer: a fallback is not the model's), and why the others are fallbacks (read from
   results.jsonl: the setting or the fault); the server's start-up time against Kaggle's 15
   minutes, the wall time against the competition's hours. It fails when most answers are
   fallbacks.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

from ..competitions import COMPETITIONS, get_competition
from .wheelhouse import image_names

__all__ = ["Rehearsal", "RehearsalError", "Report", "prepare_image_wheels"]

STARTUP_LIMIT_S = 15 * 60  # Kaggle: the inference server must start within 15 minutes
# What checking a submission needs on the host (polars reads submission.parquet), and the
# extra that brings it.
HOST_NEEDS = "pip install 'aimo_lib[kaggle]'"
_PORTS = (50051, *range(60053, 60063))
_STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")


class RehearsalError(RuntimeError):
    """The rehearsal could not be set up (a missing folder, file or tool)."""


@dataclass
class Report:
    competition: str
    ids: int = 0  # problems in test.csv
    answered: int = 0  # ids in the submission, once each, answers in range
    by_model: int = 0  # ids whose answer a sample produced (results.model_answer)
    fallbacks: dict[str, int] = field(default_factory=dict)  # why the others were not, counted
    startup_s: float | None = None  # notebook start -> its server accepts connections
    wall_s: float = 0.0
    limit_s: float = 0.0  # the competition's hours
    network_cut: bool = False
    problems: list[str] = field(default_factory=list)  # what went wrong
    submission: str = ""
    log: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        start = "-" if self.startup_s is None else f"{self.startup_s:.0f} s"
        lines = [
            f"rehearsal of {self.competition} (network cut: "
            f"{'yes' if self.network_cut else 'NO'})",
            f"  answered        {self.answered}/{self.ids} ids, answers in range",
            f"  by the model    {self.by_model}/{self.ids} (the rest: the fallback)",
            *(f"  fallback {n}x    {why}" for why, n in self.fallbacks.items()),
            f"  server start-up {start} (Kaggle's limit {STARTUP_LIMIT_S // 60} min)",
            f"  wall time       {self.wall_s:.0f} s (the competition's {self.limit_s / 3600:g} h)",
            f"  submission      {self.submission}",
            f"  notebook log    {self.log}"]
        lines += [f"  PROBLEM: {p}" for p in self.problems] or ["  OK"]
        return "\n".join(lines)


@dataclass
class Rehearsal:
    """One rehearsal; see the module docstring. `run()` returns the Report."""

    folder: str  # the kernel folder: kernel-metadata.json and its notebook
    wheels: str  # the wheels dataset folder (aimo-kaggle wheelhouse)
    work: str  # where the Kaggle-like tree, the venv and the logs go
    model: str | None = None  # a checkpoint folder to attach (None: no model attached)
    model_layout: str = "dataset"  # "dataset" (<slug>/<folder>) or "models" (Kaggle Models)
    competition_data: str | None = None  # the competition's downloaded data folder
    problems: str = "samples"  # without competition data: the test.csv's problems
    limit: int | None = None
    settings: dict[str, str] = field(default_factory=dict)  # AIMO_* for the notebook
    python: str = sys.executable  # the target interpreter (the image's Python)
    image_wheels: str | None = None  # wheels of what the image provides (prepare_image_wheels)
    cut_network: bool = True
    timeout_s: float | None = None  # default: the competition's hours
    image_provides: tuple[str, ...] = ()  # the image's distributions beyond IMAGE_PROVIDES

    def run(self) -> Report:
        if importlib.util.find_spec("polars") is None:  # before the hours of the run, not after
            raise RehearsalError(f"checking the submission needs polars here: {HOST_NEEDS}")
        meta, competition = self._metadata()
        paths = self._layout(meta, competition)
        self._venv(paths)
        inner = [sys.executable, "-m", "aimo_lib.kaggle.rehearsal", json.dumps(
            {"rehearsal": asdict(self), "paths": paths, "competition": competition})]
        cut = _network_cut() if self.cut_network else None
        if self.cut_network and cut is None:
            print("WARNING: the network cannot be cut here (no `unshare -n`): the rehearsal "
                  "runs with the network on, so it cannot prove the install is offline",
                  file=sys.stderr, flush=True)
        subprocess.run((cut or []) + inner, check=False)
        with open(paths["report"], encoding="utf-8") as f:
            return Report(**json.load(f))

    # ------------------------------------------------------------ the tree

    def _metadata(self) -> tuple[dict, str]:
        path = os.path.join(self.folder, "kernel-metadata.json")
        if not os.path.isfile(path):
            raise RehearsalError(f"{path} not found: --dir is the folder aimo-kaggle "
                                 "kernel-metadata wrote (or the repository)")
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        sources = meta.get("competition_sources") or []
        names = [c.name for c in COMPETITIONS.values() if c.kaggle_dir in sources]
        if not names:
            raise RehearsalError(f"{path}: competition_sources {sources} names no AIMO "
                                 "competition")
        return meta, names[0]

    def _layout(self, meta: dict, competition: str) -> dict:
        c = get_competition(competition)
        work = os.path.abspath(self.work)
        paths = {name: os.path.join(work, name) for name in ("input", "working", "gateway")}
        for folder in paths.values():
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
        out_dir = {k.lower(): v for k, v in self.settings.items()}.get("out_dir", "submission")
        paths.update(venv=os.path.join(work, "venv"), report=os.path.join(work, "report.json"),
                     out_dir=str(out_dir),
                     log=os.path.join(work, "notebook.log"),
                     notebook=os.path.join(self.folder, meta["code_file"]),
                     competition=os.path.join(paths["input"], c.kaggle_dir))
        if not os.path.isfile(os.path.join(self.wheels, "requirements.txt")):
            raise RehearsalError(f"{self.wheels} is no wheelhouse (no requirements.txt): build "
                                 "one with aimo-kaggle wheelhouse")
        datasets = meta.get("dataset_sources") or ["you/aimo-lib-wheels"]
        os.symlink(os.path.abspath(self.wheels),
                   os.path.join(paths["input"], datasets[0].split("/")[-1]))
        if self.model is not None:
            self._attach_model(meta, paths["input"])
        if self.competition_data:
            os.symlink(os.path.abspath(self.competition_data), paths["competition"])
        else:
            self._standin_data(competition, paths["competition"])
        return paths

    def _attach_model(self, meta: dict, root: str) -> None:
        model = os.path.abspath(self.model)
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise RehearsalError(f"{model} is no checkpoint folder (no config.json)")
        if self.model_layout == "models":
            source = (meta.get("model_sources") or ["you/model/transformers/default/1"])[0]
            parts = source.split("/")[1:]  # <model>/<framework>/<variation>/<version>
            where = os.path.join(root, *parts)
        else:
            where = os.path.join(root, "model", os.path.basename(model.rstrip("/")))
        os.makedirs(os.path.dirname(where), exist_ok=True)
        os.symlink(model, where)

    def _standin_data(self, competition: str, folder: str) -> None:
        """aimo_lib's stand-in API and a test.csv of the problems (answers kept aside)."""
        from .gateway import load_problems

        os.makedirs(folder)
        api = "aimo" if get_competition(competition).server is None else "kaggle_evaluation"
        shutil.copytree(os.path.join(_STANDINS, api), os.path.join(folder, api),
                        ignore=shutil.ignore_patterns("__pycache__"))
        import csv

        problems = load_problems(self.problems, self.limit)
        with open(os.path.join(folder, "test.csv"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "problem"])
            w.writerows([(p.id, p.problem) for p in problems])

    def _venv(self, paths: dict) -> None:
        shutil.rmtree(paths["venv"], ignore_errors=True)
        result = subprocess.run([self.python, "-m", "venv", paths["venv"]], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RehearsalError(f"creating a venv with {self.python} failed:\n{result.stderr}")


# ---------------------------------------------------------------- the image's packages


def prepare_image_wheels(folder: str, python: str = sys.executable,
                         extra: tuple[str, ...] = ()) -> str:
    """Wheels of what the Kaggle image provides (IMAGE_PROVIDES and `extra`), at the versions
    installed here, for `python`: downloaded once (this needs the network) and reused."""
    pins = []
    for name in image_names(extra):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    stamp = os.path.join(folder, "image.txt")
    if os.path.exists(stamp) and open(stamp, encoding="utf-8").read().split() == pins:
        return folder
    os.makedirs(folder, exist_ok=True)
    result = subprocess.run([python, "-m", "pip", "download", "-q", "-d", folder, *pins],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RehearsalError(f"downloading the image's packages failed:\n{result.stderr[-2000:]}")
    with open(stamp, "w", encoding="utf-8") as f:
        f.write("\n".join(pins) + "\n")
    return folder


# ---------------------------------------------------------------- the network cut


def _network_cut() -> list[str] | None:
    """The command prefix that runs a command in a new network namespace (loopback only), or
    None where that is not permitted."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def _loopback_up() -> None:
    """Bring `lo` up in this (new) network namespace, so gRPC on localhost works."""
    if shutil.which("ip") and subprocess.run(["ip", "link", "set", "lo", "up"],
                                             capture_output=True).returncode == 0:
        return
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def _offline() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return False
    except OSError:
        return True


# ---------------------------------------------------------------- inside the cut


def _notebook_script(notebook: str, out: str) -> None:
    """The notebook's code cells, in order, as one script (what its kernel would run)."""
    with open(notebook, encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    magic = [line for cell in code for line in cell.splitlines()
             if line.lstrip().startswith(("!", "%"))]
    if magic:
        raise RehearsalError(f"{notebook} uses IPython magics ({magic[0]!r}), which a plain "
                             "interpreter cannot run: use subprocess in the notebook")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(code) + "\n")


def _port_open() -> bool:
    for port in _PORTS:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            continue
    return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the notebook and everything it started (its process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _inner(spec: dict) -> None:
    r, paths, competition = spec["rehearsal"], spec["paths"], spec["competition"]
    c = get_competition(competition)
    report = Report(competition, limit_s=c.total_s, log=paths["log"])
    submission = None
    try:
        if r["cut_network"]:
            _loopback_up()
        report.network_cut = _offline()
        submission = _run_inside(r, paths, competition, report)
    except Exception as exc:  # noqa: BLE001 - a report always comes out
        report.problems.append(f"the rehearsal broke: {type(exc).__name__}: {exc}")
    try:
        _check(report, competition, paths, submission)
    except Exception as exc:  # noqa: BLE001 - as above
        report.problems.append(f"checking the submission broke: {type(exc).__name__}: {exc}")
    with open(paths["report"], "w", encoding="utf-8") as f:
        json.dump(asdict(report), f, indent=2)


def _run_inside(r: dict, paths: dict, competition: str, report: Report) -> str:
    """Install the image, run the notebook (and the gateway); the submission's path."""
    c = get_competition(competition)
    venv_python = os.path.join(paths["venv"], "bin", "python")
    if r["image_wheels"]:  # and every wheel put there: a user adds to the image that way too
        subprocess.run([venv_python, "-m", "pip", "install", "-q", "--no-index",
                        "--find-links", r["image_wheels"],
                        *image_names(r["image_provides"], r["image_wheels"])], check=True)
    script = os.path.join(os.path.dirname(paths["log"]), "notebook.py")
    _notebook_script(paths["notebook"], script)
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update({"KAGGLE_IS_COMPETITION_RERUN": "1", "AIMO_KAGGLE_INPUT": paths["input"],
                "PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update({f"AIMO_{k.upper()}": str(v) for k, v in r["settings"].items()})
    timeout = r["timeout_s"] or c.total_s
    start = time.monotonic()
    with open(paths["log"], "w", encoding="utf-8") as log:
        notebook = subprocess.Popen([venv_python, script], cwd=paths["working"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        if c.server is None:  # AIMO 1: the `aimo` loop runs inside the notebook
            notebook.wait(timeout)
            submission = os.path.join(paths["working"], "submission.csv")
        else:
            while not _port_open():
                if notebook.poll() is not None:
                    raise RuntimeError(f"the notebook exited (code {notebook.returncode}) "
                                       f"before its server started; see {paths['log']}")
                if time.monotonic() - start > STARTUP_LIMIT_S:
                    break
                time.sleep(0.5)
            report.startup_s = time.monotonic() - start
            n = competition[-1]
            gateway = subprocess.run(
                [venv_python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                 f"from kaggle_evaluation.aimo_{n}_gateway import AIMO{n}Gateway; "
                 f"AIMO{n}Gateway((sys.argv[2],)).run()", paths["competition"],
                 os.path.join(paths["competition"], "test.csv")],
                cwd=paths["gateway"], env={k: v for k, v in env.items()
                                           if k != "KAGGLE_IS_COMPETITION_RERUN"},
                capture_output=True, text=True, timeout=timeout)
            if gateway.returncode != 0:
                report.problems.append(f"the gateway failed: {gateway.stderr.strip()[-1500:]}")
            submission = os.path.join(paths["gateway"], "submission.parquet")
    finally:
        report.wall_s = time.monotonic() - start
        _stop(notebook)
    return submission


def _check(report: Report, competition: str, paths: dict, submission: str | None) -> None:
    try:
        import polars as pl
    except ImportError:
        report.problems.append(f"checking the submission needs polars here: {HOST_NEEDS}")
        return

    c = get_competition(competition)
    ids = pl.read_csv(os.path.join(paths["competition"], "test.csv"),
                      schema_overrides={"id": pl.String})["id"].to_list()
    report.ids, report.submission = len(ids), submission or ""
    if submission is None or not os.path.exists(submission):
        report.problems.append(f"no submission was written ({submission}); see "
                               f"{paths['log']}")
        return
    sub = (pl.read_csv(submission, schema_overrides={"id": pl.String})
           if submission.endswith(".csv") else pl.read_parquet(submission))
    lo, hi = c.answer_range
    good = [i for i, a in zip(sub["id"].cast(pl.String).to_list(), sub["answer"].to_list(),
                              strict=True)
            if isinstance(a, int) and not isinstance(a, bool) and lo <= a <= hi]
    report.answered = len(set(good) & set(ids))
    if sorted(sub["id"].cast(pl.String).to_list()) != sorted(ids):
        report.problems.append("the submission's ids are not test.csv's, once each")
    if report.answered != len(ids):
        report.problems.append(f"{len(ids) - report.answered} answers missing or out of "
                               f"{lo}..{hi}")
    out_dir = paths.get("out_dir") or "submission"
    results = os.path.join(paths["working"], out_dir, "results.jsonl")
    by_model, causes = model_counts(results, ids)
    report.by_model, report.fallbacks = by_model, causes
    if 2 * (len(ids) - by_model) > len(ids):  # most are fallbacks: say why, loudly
        why = "; ".join(f"{n}x {cause}" for cause, n in causes.items())
        report.problems.append(f"{len(ids) - by_model} of {len(ids)} answers are the fallback, "
                               f"not the model's: {why} (from {results}; the log: "
                               f"{paths['log']})")
    if report.startup_s is not None and report.startup_s > STARTUP_LIMIT_S:
        report.problems.append(f"the server started after {report.startup_s:.0f} s, over "
                               "Kaggle's 15 minutes")
    if report.wall_s > c.total_s:
        report.problems.append(f"the run took {report.wall_s:.0f} s, over the competition's "
                               f"{c.hours:g} h")


def model_counts(results: str, ids: list[str]) -> tuple[int, dict[str, int]]:
    """How many of `ids` a sample answered, by their latest record in `results`, and why the
    others got the fallback (results.fallback_cause), most frequent first."""
    from collections import Counter

    from ..records import read_jsonl
    from ..results import fallback_cause

    latest = {}
    for row in read_jsonl(results) if os.path.exists(results) else []:
        if isinstance(row, dict) and isinstance(row.get("id"), (str, int)):
            latest[str(row["id"])] = row
    causes = Counter(fallback_cause(latest[i]) if i in latest else "no record (never served?)"
                     for i in ids)
    by_model = causes.pop(None, 0)
    return by_model, dict(causes.most_common())


if __name__ == "__main__":
    _inner(json.loads(sys.argv[1]))
