import gc
import os
import resource
import sys
import threading
import time

import pytest
from hypothesis import settings

# A broken sandbox must not be able to harm the machine running the tests: cap this process
# (and so everything it starts) before any sandbox exists.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NPROC)
if os.geteuid() != 0 and _hard == resource.RLIM_INFINITY:
    resource.setrlimit(resource.RLIMIT_NPROC, (4096, 4096))

# Hypothesis's default 200 ms per example is a wall-clock limit: on a machine other work keeps
# busy it failed examples that do bounded work. The examples' work is what is bounded here.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

# Under pytest -n (scripts/test.sh --fast) each worker's stand-in gateway gets gRPC ports of its
# own: Kaggle's fixed ports would let one worker's gateway reach another's server.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _first = 52000 + 20 * int(_WORKER[2:])
    os.environ["KAGGLE_STANDIN_GRPC_PORTS"] = f"{_first},{_first + 10}"

# Visible to the test process only; the sandbox must never show it to model code.
os.environ.setdefault("SANDBOX_TEST_SECRET_TOKEN", "hunter2-do-not-leak")


@pytest.fixture(scope="session")
def sandbox():
    from aimo_lib.sandbox import Sandbox

    with Sandbox(timeout_s=3.0, workers=2, max_output_chars=400) as sb:
        yield sb


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M (about 15 s to load): one per test session. One CPU thread:
    the suite must pass on a machine other work keeps busy, where two threads that wait for
    each other ran its generation 4-10 times slower than one (past the tests' timeout)."""
    pytest.importorskip("transformers")
    from aimo_lib.engines import HFEngine

    engine = HFEngine(batch_size=8, threads=1)
    yield engine
    engine.close()


# ---------------------------------------------------------------- no thread outlives its test
# A thread left running by one test (a stalled request waiting an hour, an engine's event loop)
# takes the CPU and the memory of the tests after it: on a busy machine that is what made the
# suite miss its timeouts. After each test, the threads it started that are still at work (in
# this project's code, or this project's own engine threads) get a while to end (a code block
# cut by its timeout, a session closing on a loaded machine); those still at work then are
# listed at the end of the run, and fail the test in the files below, whose tests are made to
# end all they start. Idle pool workers are not at work: they end with their pool.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_THREADS = ("vllm-async", "solver-generate")  # ours, though running library code only
_LINGER_S = 30.0
_STRICT = {f"tests/test_{name}.py" for name in (
    "answers", "chaos", "confidence", "engines", "harmony", "hostile", "never_lose",
    "pipeline", "solver", "vllm")}
_LEFT: list[str] = []


def _at_work(t: threading.Thread) -> bool:
    frame = sys._current_frames().get(t.ident)
    if frame is None or not t.is_alive():
        return False
    if frame.f_code.co_name == "_worker" and "concurrent" in frame.f_code.co_filename:
        return False  # a pool worker waiting for work
    if t.name.startswith(_OWN_THREADS):
        return True
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(_REPO) and os.sep + ".venv" not in path[len(_REPO):]:
            return True
        frame = frame.f_back
    return False


def _outliving(before: set) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and _at_work(t)]


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test(request):
    before = set(threading.enumerate())
    yield
    left = _outliving(before)
    if left:
        gc.collect()  # an engine no test holds any more may close its pool on collection
        end = time.monotonic() + _LINGER_S
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = _outliving(before)
    if not left:
        return
    frames = sys._current_frames()
    where = "; ".join(f"{t.name} in {frames[t.ident].f_code.co_name} "
                      f"({os.path.basename(frames[t.ident].f_code.co_filename)}:"
                      f"{frames[t.ident].f_lineno})" for t in left if t.ident in frames)
    _LEFT.append(f"{request.node.nodeid}: {where}")
    if request.node.nodeid.split("::")[0] in _STRICT:
        pytest.fail(f"threads still at work {_LINGER_S:g} s after the test: {where}")


def pytest_terminal_summary(terminalreporter):
    if _LEFT:
        terminalreporter.section("threads that outlived their test")
        for line in _LEFT:
            terminalreporter.line(line)
