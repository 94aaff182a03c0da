"""Sandboxed execution of model-written Python.

    with Sandbox(timeout_s=5.0) as sb:
        sb.run("sp.factor(x**2 - 1)")            # ExecutionResult(status="ok", output=...)
        sb.run_many(codes)                       # concurrently, results in order
        s = sb.session(); s.run("a = 2"); s.run("a * 21")   # names persist in a session

Model code is hostile input. Each worker is a separate warm Python process (see
`_sandbox_worker.py`) that imports math/numpy/sympy once and forks a fresh, isolated child
per execution, so a run costs a fork (milliseconds), never an interpreter start-up, and no run
sees another's state. Isolation comes from the OS (namespaces, chroot, an unprivileged uid,
rlimits), never from in-process guards; `Sandbox.isolation` says what is in force here.
Everything here is thread-safe and uses no signals in the calling thread.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass

from ._sandbox_io import SandboxError, Worker, WorkerDied, shutdown_workers, truncation_marker
from .pools import prestarted_pool

__all__ = ["DEFAULT_PRELOAD", "ExecutionResult", "Isolation", "Sandbox", "SandboxError", "Session",
           "clip_middle"]

# The names every execution starts with; also the seed notebook's prelude, which it prepended
# to every block (dialects.ToRASeed).
DEFAULT_PRELOAD = "import math\nimport numpy as np\nimport sympy as sp\n"


def clip_middle(text: str, limit: int) -> str:
    """`text` with its middle replaced by the truncation marker when longer than `limit`."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + truncation_marker(len(text) - 2 * half) + text[-half:]

# Loaded once in every worker. A chrooted child cannot read new module files, so model code
# can import only what is loaded already: the standard modules that model code reaches for.
DEFAULT_MODULES = (
    "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal",
    "fractions", "functools", "heapq", "itertools", "json", "math", "numbers", "operator",
    "random", "re", "statistics", "string", "sys", "time", "typing", "numpy", "sympy",
    "mpmath", "sympy.abc",
)

# Runs once per worker so that sympy's caches and lazily imported submodules are in place
# before any fork: a child then pays neither.
DEFAULT_WARMUP = """
x, y = sp.symbols('x y')
sp.factor(x**4 - 1); sp.expand((x + y)**5); sp.simplify(sp.sin(x)**2 + sp.cos(x)**2)
sp.solve([x + y - 3, x - y - 1], [x, y]); sp.solve(x**2 - 2, x); sp.nsimplify(0.5)
sp.integrate(x**2, (x, 0, 1)); sp.diff(sp.exp(x) * x, x); sp.limit(sp.sin(x) / x, x, 0)
sp.summation(x, (x, 1, 10)); sp.Rational(1, 3) + sp.sqrt(2); sp.N(sp.pi, 20)
sp.isprime(97); sp.factorint(360); sp.divisors(12); sp.binomial(10, 3)
sp.Matrix([[1, 2], [3, 4]]).det()
sp.Poly(x**2 + 1, x).all_coeffs(); sp.roots(x**3 - 1); sp.gcd(12, 18); sp.mod_inverse(3, 7)
sp.latex(x**2); str(sp.sqrt(8)); sp.totient(10); sp.primerange(1, 20); sp.Eq(x, 1)
np.linalg.det(np.eye(3)); np.array([1, 2, 3]).sum(); np.roots([1, 0, -1]); np.arange(5) % 2
"""

# Each worker runs its children under uids of its own (a fresh one per execution, recycled after
# UID_SPAN), and leftovers are killed by uid: two sandboxes on one machine (two solvers, test
# workers) must never share a uid, or one kills the other's children. Each takes a random block.
UID_SPAN = 10_000
_UID_FLOOR, _UID_CEIL = 1_000_000, 2**31 - 1


def _uid_block(workers: int, span: int) -> int:
    size = workers * span
    return _UID_FLOOR + random.SystemRandom().randrange((_UID_CEIL - _UID_FLOOR) // size) * size


@dataclass
class ExecutionResult:
    """What one execution produced.

    status: "ok", "error" (an exception; `output` ends with its traceback), "timeout" or
    "crashed" (killed by a signal or a limit). `output` is what the model should see.
    """

    status: str
    output: str
    duration_s: float
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """The isolation actually in force (it depends on the OS and on privileges)."""

    level: str  # "namespaces" (strong) > "chroot-uid" > "process" (weak)
    pid_namespace: bool
    net_namespace: bool
    private_mounts: bool
    chroot: bool
    uid_drop: bool
    user_namespace: bool
    warnings: tuple[str, ...] = ()


class Sandbox:
    """A pool of warm, isolated Python workers for model-written code. See the module doc.

    timeout_s: wall-clock limit per execution (the whole process tree is killed).
    memory_mb: address-space limit per execution. max_output_chars: output beyond this keeps
    its head and tail with a marker in between. workers: number of worker processes (the
    number of executions that run at once); default os.cpu_count().
    preload: code run once per worker; its names are the globals of every execution.
    modules: modules imported once per worker, so that model code can import them.
    isolation: "auto" (strongest available, warns if weak), "namespaces" (raise unless the
    strong level is available), "chroot-uid" (no namespaces, as in a container without
    CAP_SYS_ADMIN; needs root) or "process" (weak; for platforms without namespaces).
    max_procs / max_file_mb / scratch_mb: processes, file size and scratch space per execution.
    python / pythonpath: the interpreter for the workers and extra import paths for it.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        memory_mb: int = 2048,
        max_output_chars: int = 2000,
        workers: int | None = None,
        *,
        preload: str = DEFAULT_PRELOAD,
        modules: tuple[str, ...] = DEFAULT_MODULES,
        warmup: str = DEFAULT_WARMUP,
        isolation: str = "auto",
        max_procs: int = 32,
        max_file_mb: int = 16,
        scratch_mb: int = 64,
        session_cpu_s: int = 600,
        uid_base: int | None = None,
        python: str | None = None,
        pythonpath: tuple[str, ...] = (),
        start_timeout_s: float = 120.0,
    ):
        if timeout_s <= 0 or memory_mb < 64 or max_output_chars < 20:
            raise ValueError("need timeout_s > 0, memory_mb >= 64 and max_output_chars >= 20")
        if isolation not in ("auto", "namespaces", "chroot-uid", "process"):
            raise ValueError("isolation must be 'auto', 'namespaces', 'chroot-uid' or 'process'")
        self.timeout_s = float(timeout_s)
        n = max(1, workers or os.cpu_count() or 1)
        self._cfg = dict(
            preload=preload, modules=list(modules), warmup=warmup, isolation=isolation,
            memory_mb=memory_mb, max_output_chars=max_output_chars, max_procs=max_procs,
            max_file_mb=max_file_mb, scratch_mb=scratch_mb, session_cpu_s=session_cpu_s,
            uid_base=_uid_block(n, UID_SPAN) if uid_base is None else uid_base, uid_span=UID_SPAN,
        )
        self._python = python or sys.executable
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # A scrubbed environment: no tokens, keys or proxies reach model code.
        self._env = {
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([package_root, *pythonpath]),
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        }
        self._cond = threading.Condition()
        self._idle = set(range(n))
        self._generation = [0] * n
        self._sessions_on = [0] * n
        self._workers: list[Worker | None] = [None] * n
        self._closed = False
        self._finalizer = weakref.finalize(self, shutdown_workers, self._workers)
        self._pool = prestarted_pool(n, "sandbox")
        for i in range(n):
            self._workers[i] = self._start_worker(i, wait=False)
        for w in self._workers:
            self._wait_ready(w, timeout=start_timeout_s)
        iso = self._workers[0].ready["isolation"]
        self.isolation = Isolation(**{**iso, "warnings": tuple(iso["warnings"])})
        if self.isolation.level != "namespaces":
            if isolation == "namespaces":
                self.close()
                raise SandboxError(
                    "strong isolation is unavailable here: " + "; ".join(self.isolation.warnings)
                    + ". Run as root or enable unprivileged user namespaces, or pass "
                    "isolation='auto' to accept a weaker level.")
            if isolation == "auto":
                warnings.warn(f"sandbox isolation is weak here ({self.isolation.level}): "
                              + "; ".join(self.isolation.warnings), RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------ workers

    def _start_worker(self, i: int, wait: bool = True) -> Worker:
        # Each worker gets its own uid range so concurrent executions never share a uid.
        cfg = {**self._cfg, "uid_base": self._cfg["uid_base"] + i * self._cfg["uid_span"]}
        w = Worker(cfg, self._python, self._env)
        if wait:
            self._wait_ready(w, timeout=120.0)
        return w

    def _wait_ready(self, w: Worker, timeout: float) -> None:
        try:
            w.wait_ready(timeout)
        except SandboxError:
            self.close()
            raise

    def _acquire(self, worker: int | None, deadline: float | None = None) -> int | None:
        """An idle worker (that one, if given); None if `deadline` passes while waiting."""
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the sandbox is closed")
                if worker is None and self._idle:
                    i = min(self._idle)
                    break
                if worker is not None and worker in self._idle:
                    i = worker
                    break
                if deadline is None:
                    self._cond.wait()
                elif not self._cond.wait(max(0.0, deadline - time.monotonic())) and (
                        time.monotonic() >= deadline):
                    return None
            self._idle.discard(i)
            return i

    def _release(self, i: int) -> None:
        with self._cond:
            self._idle.add(i)
            self._cond.notify_all()

    def _call(self, msg: dict, worker: int | None, wait_s: float,
              deadline: float | None = None) -> tuple[int, int, dict]:
        """Send one request to a worker (any idle one if worker is None).

        Returns (worker index, its generation, reply). A worker that dies or hangs is
        replaced; the reply then reports a crash. With a `deadline` (time.monotonic()), a
        request still waiting for its worker then is not sent (a "timeout" reply says so),
        and a sent one's timeout is cut to the time left.
        """
        i = self._acquire(worker, deadline)
        if deadline is not None:
            left = deadline - time.monotonic()
            if i is None or left <= 0:
                if i is not None:
                    self._release(i)
                return -1, -1, dict(NOT_RUN, alive=True)
            if "timeout" in msg:
                msg = dict(msg, timeout=min(msg["timeout"], left))
        try:
            gen = self._generation[i]
            try:
                return i, gen, self._workers[i].request(msg, wait_s)
            except WorkerDied as exc:
                self._workers[i].kill()
                self._workers[i] = self._start_worker(i)
                self._generation[i] += 1
                self._sessions_on[i] = 0
                crash = {"status": "crashed", "output": f"[sandbox worker failed: {exc}]",
                         "truncated": False, "duration": wait_s, "alive": False}
                return i, gen, crash
        finally:
            self._release(i)

    # ------------------------------------------------------------ public API

    def run(self, code: str, timeout_s: float | None = None, display: bool = True, *,
            deadline: float | None = None, stderr_on_success: bool = True,
            max_output_chars: int | None = None) -> ExecutionResult:
        """Execute `code` in a fresh isolated process with the preloads as globals.

        display: show the value of a bare last expression, as the Python REPL does.
        deadline (time.monotonic()): do not start after it, and stop by it at the latest.
        stderr_on_success: False shows stderr (warnings) only when the code fails.
        max_output_chars: keep less output than the sandbox's own limit (never more); the
        marker then counts what this call cut, so nothing downstream needs to cut again.
        """
        timeout = self._timeout(timeout_s)
        msg = {"op": "run", "code": _check_code(code), "timeout": timeout, "display": display,
               "stderr_on_success": stderr_on_success, "max_output": max_output_chars}
        return _result(self._call(msg, None, timeout + 30.0, deadline)[2])

    def run_many(self, codes: list[str], timeout_s: float | None = None,
                 display: bool = True, **kwargs) -> list[ExecutionResult]:
        """Execute independent snippets concurrently across workers; results in order.
        Keyword arguments are run()'s."""
        return list(self._pool.map(lambda c: self.run(c, timeout_s, display, **kwargs), codes))

    def session(self, replay: bool = True) -> Session:
        """A stateful session: names defined by one run are visible to the next."""
        return Session(self, replay)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._pool.shutdown(wait=False)
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _timeout(self, timeout_s: float | None) -> float:
        t = self.timeout_s if timeout_s is None else float(timeout_s)
        if t <= 0:
            raise ValueError("timeout_s must be positive")
        return t

    # ------------------------------------------------------------ session plumbing

    def _session_open(self) -> tuple[int, int, int]:
        with self._cond:  # spread sessions over workers
            worker = min(range(len(self._workers)), key=lambda k: self._sessions_on[k])
            self._sessions_on[worker] += 1
        i, gen, reply = self._call({"op": "session_open"}, worker, 30.0)
        if "sid" not in reply:
            raise SandboxError("could not open a sandbox session: " + reply.get("output", ""))
        return i, gen, reply["sid"]

    def _session_alive(self, handle: tuple[int, int, int]) -> bool:
        i, gen, _ = handle
        return not self._closed and self._generation[i] == gen

    def _session_call(self, handle, op: str, deadline: float | None = None, **kw) -> dict:
        i, gen, sid = handle
        if self._generation[i] != gen:  # the worker was replaced: the session is gone
            return {"status": "crashed", "output": "", "truncated": False, "duration": 0.0,
                    "alive": False}
        wait = kw.get("timeout", 0.0) + 30.0
        return self._call({"op": op, "sid": sid, **kw}, i, wait, deadline)[2]

    def _session_closed(self, handle) -> None:
        with self._cond:
            if self._generation[handle[0]] == handle[1]:
                self._sessions_on[handle[0]] -= 1


class Session:
    """Runs that share globals, in one isolated process.

    After a timeout or crash the process is replaced, and the cells that succeeded so far are
    replayed to restore the names (unless replay=False). The cell that failed is never replayed.
    """

    def __init__(self, sandbox: Sandbox, replay: bool = True):
        self._sb, self._replay = sandbox, replay
        self._cells: list[str] = []
        self._handle: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def run(self, code: str, timeout_s: float | None = None, display: bool = True, *,
            deadline: float | None = None, stderr_on_success: bool = True,
            max_output_chars: int | None = None) -> ExecutionResult:
        """Sandbox.run's arguments; names persist between runs."""
        timeout = self._sb._timeout(timeout_s)
        code = _check_code(code)
        with self._lock:
            if self._closed:
                raise SandboxError("this session is closed")
            note = ""
            if self._handle is None or not self._sb._session_alive(self._handle):
                note = self._restart(timeout, deadline)
            reply = self._sb._session_call(self._handle, "session_run", deadline, code=code,
                                           timeout=timeout, display=display,
                                           stderr_on_success=stderr_on_success,
                                           max_output=max_output_chars)
            if reply["status"] == "ok":
                self._cells.append(code)
            if not reply.get("alive", True):
                self._drop_handle()
            result = _result(reply)
            if note:
                result.output = note + result.output
            return result

    def _restart(self, timeout: float, deadline: float | None = None) -> str:
        """Start a fresh process; replay the successful cells. Returns a note for the model."""
        had_state = bool(self._cells) or self._handle is not None
        self._drop_handle()
        self._handle = self._sb._session_open()
        if not self._cells:
            return "[sandbox: the session was restarted; earlier names are gone]\n" if (
                had_state and not self._replay) else ""
        if not self._replay:
            self._cells = []
            return "[sandbox: the session was restarted; earlier names are gone]\n"
        for k, cell in enumerate(self._cells):
            reply = self._sb._session_call(self._handle, "session_run", deadline, code=cell,
                                           timeout=timeout)
            if reply["status"] != "ok":
                self._cells = self._cells[:k]
                if not reply.get("alive", True):
                    self._drop_handle()
                    self._handle = self._sb._session_open()
                    self._cells = []
                return "[sandbox: the session was restarted and could not be fully restored]\n"
        return ""

    def _drop_handle(self) -> None:
        if self._handle is not None:
            if self._sb._session_alive(self._handle):
                self._sb._session_call(self._handle, "session_close")
            self._sb._session_closed(self._handle)
            self._handle = None

    def close(self) -> None:
        with self._lock:
            if not self._closed and not self._sb._closed:
                self._drop_handle()
            self._closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_code(code: str) -> str:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    return code


NOT_RUN = {"status": "timeout", "output": "[not run: the time limit was reached]",
           "truncated": False, "duration": 0.0}


def _result(reply: dict) -> ExecutionResult:
    return ExecutionResult(status=reply["status"], output=reply["output"],
                           duration_s=reply["duration"], truncated=reply["truncated"])
